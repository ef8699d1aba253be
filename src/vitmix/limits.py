"""The bounds vitmix puts on what it reads, in one place: sizes of files and values, nesting,
image sizes, class counts and every integer setting.

Each bound is checked where the value is parsed, before any work, so that a hostile or mistaken
input (a JSON nested ten thousand deep, a YAML alias bomb, an image size in the millions, a
label of 10**12, a seed past 64 bits) is one line naming the value and the bound rather than a
RecursionError, a MemoryError or a failure minutes later. Every bound is far above what a real
run uses; the comment beside each says why it is where it is.
"""

from __future__ import annotations

# --- Text read as JSON or YAML (--model-kwargs, --config, recipes, _info.json, metadata) ---

# A config.yaml is about 2 KB and timm's _info.json of ImageNet-1K's 1,024 shards about 60 KB;
# 1 MiB is far above both and still parsed in a blink.
MAX_STRUCTURED_TEXT_BYTES = 1 << 20
# Settings nest a few levels (model_kwargs holding per-stage lists); 32 is far above that and
# far below Python's recursion limit (1,000), which the JSON and YAML parsers run into. The
# tensors of a training checkpoint nest a few levels too (optimizer/state/0/exp_avg): its
# checksum (checkpoints/checksum.py) walks no deeper than this either.
MAX_NESTING_DEPTH = 32
# Values (mappings, lists, scalars) a YAML file holds once its aliases are expanded: a config
# holds about a hundred. The bound stops an alias bomb (nine aliases of nine aliases ... of a
# list) before anything expands it: one such file of seven lines once printed an error line
# of 39 MB.
MAX_YAML_VALUES = 100_000

# --- Messages ---

# A value quoted in a message is cut to this many characters and "..." (a 2 MB --model-kwargs
# quoted whole is no message for a person).
MAX_QUOTED_CHARS = 80
# A whole error line: the longest a message vitmix writes (the known config keys) is about
# 1,500 characters; anything longer is cut there.
MAX_MESSAGE_CHARS = 2_000

# --- Models and data ---

# Image side in pixels (img_size). Classification models are trained at 224 to 512 and
# evaluated at up to about 1,000; 4,096 leaves room for experiments, while a position
# embedding or a batch sized from 10 million pixels asks for terabytes.
MAX_IMG_SIZE = 4_096
# Input channels (in_chans of `vitmix export`, and of model arguments read from a file): RGB has
# 3, multispectral images a dozen, hyperspectral images a few hundred.
MAX_IN_CHANS = 1_024
# Classes of a classifier (num_classes, and the labels of a dataset: 0 to MAX_CLASSES - 1).
# ImageNet-21K has 21,841, the largest label set timm's models are trained on; a 768-wide head
# for 100,000 classes is 300 MB of float32, while a label of 10**12 would size a head (and a
# list of class names) beyond any memory.
MAX_CLASSES = 100_000
# Pixels of one image (width x height) read from a dataset; a larger image is a damaged sample,
# skipped and counted. 8192 x 8192 decodes to 192 MiB as RGB bytes in every loader worker; a
# PNG header can declare 100,000 x 100,000 (30 GB) in a few hundred bytes. The bound is below
# PIL's own (89,478,485 pixels, where PIL starts warning), so the line a person sees is vitmix's.
MAX_IMAGE_PIXELS = 8_192 * 8_192
# A webdataset .cls label file holds a decimal integer below MAX_CLASSES: a few bytes. Reading
# more of a file that claims to be a label is reading a file that is not one.
MAX_LABEL_FILE_BYTES = 64

# --- Model structure: the model arguments a file or --model-kwargs names, checked by the
# allowlist of vitmix.model_arguments before any model is built. The models vitmix ships are far
# below each bound (ImageNet-21K-sized heads aside, GroupMixFormer-L has 30 blocks in a stage and
# 480 channels); a damaged or hostile file must not make vitmix build a stage a million blocks
# deep or a layer of a billion channels. ---

# Stages of a hierarchical model (the length of depths, dims and every per-stage list): the
# shipped models have 4; a list of more than 8 stages is no model's, only a large value.
MAX_STAGES = 8
# Blocks in one stage: the deepest shipped stage has 30; 256 leaves room for experiments, while
# a million blocks would be built (and allocated) before the first step could fail.
MAX_DEPTH = 256
# Channels of a stage, and of one attention head (dims, head_dim): 480 at most in the shipped
# models; 8,192 is as wide as the largest published vision transformers and already a large
# share of a GPU's memory per stage.
MAX_DIM = 8_192
# An MLP's hidden width as a multiple of its stage's (mlp_ratios): models use 4 to 8; 64 times
# a stage's width is already a layer larger than the rest of the model.
MAX_MLP_RATIO = 64.0
# Groups of a block-diagonal MLP (mlp_groups): a few in the shipped models; a group keeps at
# least one channel, so past a thousand groups only the widest stages could split at all.
MAX_GROUPS = 1_024
# Attention heads of a layer (num_heads): a few to a few dozen in published models.
MAX_HEADS = 256
# The initial layer scale (layer_scale_init): small (1e-5 to 1) in every recipe; past 10 each
# residual branch is amplified from the start, which is a damaged value, not a setting.
MAX_LAYER_SCALE_INIT = 10.0

# --- Integer settings ---

# Epochs of a run (epochs, cooldown_epochs): ImageNet recipes train 300; tiny data sets a few
# thousand.
MAX_EPOCHS = 100_000
# Images per batch per process (batch_size, the lr_base_size an effective batch is given for,
# bench and eval batches): the largest published batches are about 64K images in all.
MAX_BATCH_SIZE = 1 << 20
# Batches accumulated into one update.
MAX_ACCUM_STEPS = 65_536
# Counts of images, batches or updates (val_split, log_interval, max_train_batches,
# max_val_batches, bench's repeats and warm-up runs): a billion is beyond any run, and the run's
# arithmetic on them (images trained = updates x batch) stays exact in a float64 (2**53) below
# it.
MAX_COUNT = 1_000_000_000
# Seeds: 32 bits, what NumPy's legacy generator takes; torch's DistributedSampler adds the epoch
# to the seed in a signed 64-bit integer, which a seed past 2**63 overflows ("Overflow when
# unpacking long long", after the data was loaded).
MAX_SEED = 2**32 - 1
# Loader worker processes per training process: machines have at most a few hundred cores.
MAX_WORKERS = 1_024
# torch intra-op threads per process.
MAX_THREADS = 4_096
