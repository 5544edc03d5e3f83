"""Not a config: the training recipe shared by the paper's run scripts, for its data sets."""

import ml_collections


def apply(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Sets the paper's optimisation, masking and evaluation set-up, common to its data sets."""
    # The original code merges the validation item into training and does no model selection;
    # its numbers (Table 2) are test-set numbers of the final model.
    c.split_mode = "paper"
    c.eval.every_steps = 0
    c.eval.protocols = ("pop100", "full")
    c.batch_size = 256
    c.num_train_steps = 400_000
    c.learning_rate = 1e-4
    c.warmup_steps = 100
    c.weight_decay = 0.01
    c.clip_norm = 5.0
    c.adam_bias_correction = False  # the original's BERT AdamWeightDecayOptimizer has none
    c.input.dupe_factor = 10  # masked copies per window, precomputed
    c.input.fresh_masks = False
    c.input.mask_replacement = "mask"  # the paper's runs always replace by [MASK]
    c.input.mask_last_copy = True
    c.checkpoint_every_steps = 10_000
    c.log_every_steps = 500
    return c
