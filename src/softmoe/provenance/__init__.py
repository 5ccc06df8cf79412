"""Where results came from: code identity derived from imports (deps), the run record of
machine, git, versions and hashes (record), the reproduction check (reproduction) and the run as
a Workflow Run RO-Crate (crate, jsonld/)."""
