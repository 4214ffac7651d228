"""Late rewinding and instability: ResNet-20 on CIFAR-10 (Frankle et al. 2020, LMC paper).

"Linear Mode Connectivity and the Lottery Ticket Hypothesis", Sec. 4-5: OpenLTH's
``cifar_resnet_20`` training (SGD momentum 0.9, lr 0.1, weight decay 1e-4, batch 128, 160 epochs,
lr x0.1 at epochs 80 and 120, random crop + flip augmentation), IMP pruning 20% of all weights per
level globally (every layer pruned, as OpenLTH does for ResNet-20), weights rewound to iteration
500 (``rewind="500it"``: at k = 0 the sparse networks are unstable and not matching; from roughly
k = 500-2000 they become stable and matching). Instability analysis at every level: two copies
trained from theta_k * mask with different data orders, error barrier over 30 interpolation points
(stable if < 2%).

Needs CIFAR-10 prepared for TFDS in the array_record format (``tfds build cifar10
--file_format=array_record``).
"""

from configs import resnet20_cifar10


def get_config():
  config = resnet20_cifar10.get_config()
  config.protocol, config.sparsifier = "imp", "dense"  # IMP prunes between trainings
  config.distribution = "global"
  config.prune_fraction = 0.2
  config.prune_fraction_overrides = ""
  config.rewind = "500it"
  config.levels = 10
  config.controls = ("reinit", "shuffle_layerwise")
  config.replicates = 1
  config.instability = True
  config.instability_alphas = 30
  return config
