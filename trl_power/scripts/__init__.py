"""The scripts behind `trl-power <command>` (as trl/scripts behind `trl <command>`): each a short `main` and a
`make_parser`, run under `accelerate launch` (`diagnose` in process). `utils` holds what they share: arguments,
parsing, processes, prompt data sets, models and verifiers."""
