"""Default config: BERT4Rec on the built-in synthetic data set (no download, minutes on a CPU).

    python -m bert4rec_jax.train --config=configs/default.py --workdir=/tmp/bert4rec_default

Every other config starts from this one and changes what its data set needs. Any field can be
overridden on the command line, e.g. `--config.model.hidden_size=128`.

This file is where the defaults are documented. The typed sections the config is parsed into
(`config.RunConfig`: `cloze.InputConfig`, `losses.LossConfig`, `evaluation.EvalConfig`, ...) carry
the same defaults for code that builds one by hand; tests/configs_test.py fails where they differ.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()

    # ---- Data -------------------------------------------------------------------------------
    # One of: synthetic, beauty, steam, ml-1m, ml-20m (the paper's preprocessed files),
    # ml-100k-raw, ml-1m-raw, ml-20m-raw (MovieLens from raw ratings, our preprocessing), or
    # file (your own interaction file, see c.file below).
    c.dataset = "synthetic"
    # Where TFDS caches prepared data sets and we cache prepared corpora; "" = TFDS's default
    # (~/tensorflow_datasets or $TFDS_DATA_DIR).
    c.data_dir = ""
    # Offline path: a directory holding the source files (e.g. beauty.txt or ml-100k/u.data).
    # When set, nothing is downloaded. "" = download with checksum verification.
    c.manual_dir = ""
    # "standard": train on all but the last two items, select models on the second to last.
    # "paper": merge the validation item into training, as the original code does.
    # "temporal": one timeline for all users, cut twice (c.temporal; docs/evaluation.md).
    c.split_mode = "standard"
    # Only for split_mode=temporal: the two cut-offs, each a date ("2026-01-31", or an ISO
    # time, UTC unless it names a zone) or a quantile of all interactions' times ("q0.8").
    # Training sees what came before valid_start; validation targets are each user's first
    # interaction in [valid_start, test_start); test targets each user's first at or after
    # test_start. The source needs timestamps (MovieLens, or file.timestamp_column).
    c.temporal = ml_collections.ConfigDict()
    c.temporal.valid_start = "q0.8"
    c.temporal.test_start = "q0.9"
    # Only for dataset=synthetic: its size and seed.
    c.synthetic = ml_collections.ConfigDict()
    c.synthetic.num_users = 2000  # users
    c.synthetic.num_items = 500  # items in the catalogue
    c.synthetic.seed = 0  # the generator's seed; the same seed gives the same data set
    # Only for dataset=file: your own interactions, one row per interaction (user, item, and
    # optionally a timestamp; other columns are ignored). Each user's items are ordered by
    # timestamp (ties keep file order), or by file order without one. Filters run in this order:
    # drop_repeats, then min_item_interactions, then min_user_interactions.
    c.file = ml_collections.ConfigDict()
    # The log: a file, a directory of part files (a Spark / BigQuery / Beam export; parts read
    # in the order of their paths, files starting with _ or . skipped, hive partition values
    # such as date=2026-11-30/ readable as columns) or a glob (gs://b/events/*.parquet); local
    # or gs://...; edits are noticed (every file's content is hashed).
    c.file.path = ""
    # csv, tsv, parquet or paper (<user> <item> lines); "" = by extension, also for compressed
    # text files (.csv.gz, .tsv.bz2, .txt.zst: read decompressed); a directory's from its parts'.
    c.file.format = ""
    c.file.columns = ""  # headerless CSV/TSV: names of its columns, "user_id,item_id,rating,ts"
    c.file.delimiter = ""  # CSV/TSV separator, one character ("\t" = tab); "" = , or tab
    c.file.user_column = "user_id"  # integer or string ids
    c.file.item_column = "item_id"  # integer or string ids
    c.file.timestamp_column = ""  # integers, floats or ISO-8601 strings; "" = file order
    c.file.min_user_interactions = 5  # users with fewer interactions are dropped (the paper's)
    c.file.min_item_interactions = 0  # items with fewer interactions are dropped; 0 = off
    c.file.drop_repeats = False  # drop an item that repeats the user's previous one
    # Rows with the same user, item and timestamp are counted and warned about; True drops them
    # (keeping the first).
    c.file.drop_duplicates = False
    # Optional CSV of categorical item features: a header with file.item_column and one column
    # per feature, one row per item, "|" between the values of a multi-valued cell ("" = none).
    # Used by model.item_features; items missing from it get no feature value.
    c.file.item_features_path = ""

    # ---- Model ------------------------------------------------------------------------------
    c.model = ml_collections.ConfigDict()
    c.model.max_len = 50  # positions; at test time max_len - 1 history items + [MASK]
    c.model.hidden_size = 64  # d
    c.model.num_layers = 2  # L transformer blocks
    c.model.num_heads = 2  # attention heads; must divide hidden_size
    c.model.intermediate_size = 256  # FFN width (4 d in the paper)
    c.model.hidden_dropout = 0.2  # dropout on embeddings, attention output and FFN output
    c.model.attention_dropout = 0.2  # dropout on attention probabilities
    c.model.layer_norm_eps = 1e-12  # the original code's LayerNorm epsilon
    c.model.init_std = 0.02  # truncated-normal initialiser's standard deviation
    c.model.dtype = "float32"  # compute dtype: float32 or bfloat16 (parameters stay float32)
    # Attention: "" (JAX chooses), "xla", "cudnn" (needs bfloat16) for jax.nn.dot_product_attention,
    # or "manual" (explicit softmax; used anyway while training with attention dropout).
    c.model.attention_impl = ""
    # Side features (the paper's future work; both off = the paper's model). item_features: add
    # the mean embedding of each categorical item feature (ml-100k-raw: genres, release year;
    # dataset=file: file.item_features_path) to the item's id embedding at the input.
    c.model.item_features = False
    # User features (ml-100k-raw: age group, gender, occupation): "" = off; "prefix" = one extra
    # token before the sequence; "add" = added at every position; "mask" = at [MASK] positions.
    c.model.user_features = ""
    # "bert4rec": bidirectional, cloze-trained, scored at an appended [MASK] (the paper).
    # "sasrec": SASRec as published (Kang & McAuley 2018; bert4rec_jax/models/sasrec.py):
    # causal, pre-LayerNorm on the query, a ReLU point-wise FFN, scores against the input table
    # without a bias; trained to predict the next item at every position and scored at the
    # history's last item (no [MASK]). It reads max_len items, ignores the cloze fields of
    # `input` (mask_prob, max_predictions, dupe_factor, fresh_masks, mask_replacement,
    # mask_last_*) and init_std, and has no side features. Its published shape sets
    # intermediate_size = hidden_size and layer_norm_eps = 1e-8 (configs/ml_100k_sasrec.py).
    # Any loss.type works; "bce" is the original SASRec's.
    c.model.kind = "bert4rec"
    # Rows the last block computes in training: "all" (the paper's numerics and dropout draws)
    # or "scored" (only the positions the loss reads: the same function for less work; the
    # dropout draws of the last block differ). Export computes the scored row alone anyway.
    c.model.last_block = "all"

    # ---- Loss (bert4rec_jax/losses/) ---------------------------------------------------------
    c.loss = ml_collections.ConfigDict()
    # "full": softmax over the [batch, predictions, items] logits; "chunked": the same loss,
    # streamed over item chunks (memory independent of the catalogue size); "sampled_softmax" or
    # "gbce": over num_negatives drawn items (estimates; for millions of items); "bce": the
    # original SASRec's binary loss, one uniform negative per prediction; "auto": chunked
    # above auto_chunk_above items in the vocabulary, full below.
    c.loss.type = "auto"
    # "auto" chunks vocabularies larger than this: on the 2-core CPU the chunked step is already
    # faster at 13.5k items (Beauty's shape, benchmarks/catalog_scaling.py), about even at 3.4k.
    c.loss.auto_chunk_above = 10_000
    c.loss.chunk_size = 8192  # items per chunk of the chunked loss
    c.loss.num_negatives = 1024  # sampled losses: negatives per step, shared by the whole batch
    # Sampled losses: negatives drawn "uniform"ly over the items or by "popularity" (sampled
    # softmax only; its logQ correction removes the proposal's bias).
    c.loss.proposal = "uniform"
    c.loss.gbce_t = 0.75  # gBCE calibration t in [0, 1]: 0 = plain BCE, 1 = fully calibrated
    # gbce: start at the best constant score log(beta / N) (losses.gbce_shift); without it gbce
    # stays at the popularity ranking on ML-100K (issue 21).
    c.loss.gbce_shift = False

    # ---- Input pipeline (cloze masking) -----------------------------------------------------
    c.input = ml_collections.ConfigDict()
    c.input.mask_prob = 0.2  # fraction of a window's items to mask, in (0, 1]
    c.input.max_predictions = 20  # P: most masked positions per window; <= max_len
    c.input.sliding_step = 10  # step of the training windows over long sequences
    c.input.dupe_factor = 10  # masked copies per window per epoch, precomputed as the paper did
    # True: draw new masks every epoch (one copy per window); False: the paper's fixed copies.
    c.input.fresh_masks = False
    # "mask": always replace by [MASK] (the paper's runs); "bert": 80% [MASK], 10% random, 10% keep.
    c.input.mask_replacement = "mask"
    c.input.mask_last_copy = True  # add one copy per window whose last item alone is masked
    # Loss weight of a mask-last instance's one prediction (others weigh 1); the loss is the
    # weighted mean, normalised by the sum of weights. 1.0 = the paper. > 1 stresses the test-like
    # next-item task over the cloze task. Needs mask_last_copy.
    c.input.mask_last_weight = 1.0
    # 0.0 = the paper: one mask-last copy per window per epoch (a share of 1 / (copies + 1)).
    # In (0, 1): instead, about this share of each epoch's instances are mask-last (e.g. 0.25:
    # a quarter), spread evenly over the windows across epochs. Needs mask_last_copy.
    c.input.mask_last_share = 0.0
    c.input.prefetch = 2  # batches prepared ahead of the accelerator
    # Where batches are made. "tf.data": on the host, copied to the devices each step; works for
    # any corpus size. "device": the corpus (4 bytes per interaction) is copied to every device
    # once and batches are drawn there with jax.random (rows sampled with replacement; see
    # bert4rec_jax/device_input.py); the host only dispatches steps.
    c.input.pipeline = "tf.data"
    # () = off. Length buckets, e.g. (8, 16, 32, 50): each batch holds windows of one bucket and
    # is cut to its positions and prediction slots (short-sequence data: most of a step is
    # padding otherwise); the same instances per epoch, one compiled step per bucket. max_len is
    # the last bucket, added when absent. See input_pipeline.py ("Length buckets").
    c.input.buckets = ()

    # ---- Training ---------------------------------------------------------------------------
    c.seed = 0  # parameters, dropout and data order all derive from it
    c.batch_size = 128  # global batch; divisible by the number of devices
    c.num_train_steps = 1500  # the synthetic default: a few minutes on a laptop CPU
    c.learning_rate = 1e-3  # peak learning rate (the paper uses 1e-4 for its long runs)
    c.warmup_steps = 100  # linear warm-up, then the decay below
    # "linear": to zero at num_train_steps (BERT's); "none": the peak rate to the end (Adam at a
    # constant rate, as SASRec's reference code and pmixer/SASRec.pytorch train).
    c.lr_decay = "linear"
    c.weight_decay = 0.01  # decoupled; LayerNorm and bias parameters are not decayed
    c.clip_norm = 5.0  # global gradient norm clip
    c.adam_bias_correction = True  # False = BERT's original Adam (no bias correction)
    c.adam_b1 = 0.9
    c.adam_b2 = 0.999
    c.adam_eps = 1e-6

    # The device mesh (bert4rec_jax/sharding.py): mesh.data x mesh.model must be the device count.
    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = 0  # devices on the data axis (the batch is split over it); 0 = all / mesh.model
    # Devices the item table's rows (and the output bias's) are split over, for catalogues too
    # large for one device; 1 = replicated. Within a process's devices on multi-host runs.
    c.mesh.model = 1

    c.log_every_steps = 50  # metrics to TensorBoard, JSON lines and the console
    c.checkpoint_every_steps = 500  # 0 = only at the end
    c.keep_checkpoints = 3  # the last K checkpoints are kept (plus the best, see eval)

    # ---- Evaluation -------------------------------------------------------------------------
    c.eval = ml_collections.ConfigDict()
    c.eval.every_steps = 500  # validate during training; 0 = never
    c.eval.protocols = ("pop100", "full")  # pop100, uniform100, full
    c.eval.num_negatives = 100  # sampled protocols: negatives per user
    c.eval.ks = (1, 5, 10, 20)  # cut-offs for HR@k and NDCG@k
    c.eval.num_valid_users = 0  # users sampled for validation during training; 0 = all
    c.eval.metric = "pop100/ndcg@10"  # keeps the best checkpoint by this metric
    c.eval.early_stopping_patience = 0  # evaluations without improvement before stopping; 0 = off
    c.eval.batch_size = 512  # users per scoring batch (global)
    c.eval.item_chunk = 16384  # items scored at once in full ranking
    c.eval.exclude_history = True  # full ranking: drop the user's history from the candidates
    c.eval.candidate_seed = 1234  # seed of the sampled negatives, shared by every run and model
    return c
