"""The bounds on sizes and counts that vitmix accepts from outside, in one place.

A value read from a file (a checkpoint's metadata, a config) or given on the command line is
refused beyond these, in one line, before any memory is taken for it: a file must not make
vitmix build a model of a billion classes or a stage a million blocks deep. They are far above
any model vitmix ships (ImageNet-21K has 21,841 classes; GroupMixFormer-L has 30 blocks in a
stage and 480 channels), so only a damaged or hostile value meets them.
"""

MAX_NUM_CLASSES = 100_000
MAX_IMG_SIZE = 4096  # pixels, height or width
MAX_IN_CHANS = 64  # multispectral images have a dozen
MAX_STAGES = 8
MAX_DEPTH = 256  # blocks in one stage
MAX_DIM = 8192  # channels of a stage, and of an attention head
MAX_MLP_RATIO = 64.0
MAX_GROUPS = 1024  # of a block-diagonal MLP
MAX_HEADS = 256
MAX_LAYER_SCALE_INIT = 10.0
