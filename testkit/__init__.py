"""The testing kit: tiny models and the synthesized catalog, for tests, the demo and benchmarks.

Not part of the training framework (`finetune`, `data_prep` never import it); reachable from the CLI as
`mgft tiny-models` and `mgft synth-catalog`.
"""
