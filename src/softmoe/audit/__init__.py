"""The light steps that judge the results: claims (metrics/claims.json), hypotheses
(metrics/hypotheses.json), summary (metrics/<dataset>.json) and the numerics fingerprint."""
