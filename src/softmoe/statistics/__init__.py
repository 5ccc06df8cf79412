"""How claims are judged: intervals and tests (inference), the verdict rules (verdicts) and the
comparison with the paper's numbers (discrepancies)."""
