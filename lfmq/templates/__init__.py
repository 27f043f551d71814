"""The chat template lfmq ships (package data): LFM2.5's instruct template, the fallback for GGUFs that carry none
and the template `lfmq synth` writes into its checkpoints."""
