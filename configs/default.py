"""Shared defaults for every jaxpure config (NCSNv2 / ADP values of DESIGN §1).

Data-set configs (`digits.py`, `mnist.py`, `cifar10.py`) start from `get_config()` here
and change only what differs. Pixels are in [0, 1] everywhere.
"""

import ml_collections


def get_config():
  config = ml_collections.ConfigDict()
  config.seed = 0

  # Data: TFDS name, read through tfds.data_source (array_record).
  config.data = data = ml_collections.ConfigDict()
  data.name = "cifar10"
  data.data_dir = ""  # "" = TFDS default (~/tensorflow_datasets or $TFDS_DATA_DIR)
  data.image_size = 32
  data.channels = 3
  data.num_classes = 10
  data.random_flip = True  # horizontal flip in training, as NCSNv2 does for CIFAR-10

  # Score network trained by annealed DSM (power 2); s(x, sigma) = h(x) / sigma.
  config.score = score = ml_collections.ConfigDict()
  score.model = "ncsnv2"
  score.head = "score"  # "score": h has the image's shape; "energy": h = -grad_x E(x)
  score.ngf = 128
  score.sigma_max = 50.0
  score.sigma_min = 0.01
  score.num_sigmas = 232
  score.batch_size = 128
  score.num_steps = 300_000
  score.lr = 1e-4
  score.beta1 = 0.9
  score.beta2 = 0.999
  score.eps = 1e-8
  score.weight_decay = 0.0
  score.grad_clip = 1.0  # global-norm clipping as in NCSNv2's optimizer; 0 disables
  score.ema_rate = 0.999
  score.ema_debias = True  # debiased EMA: no weight left on the random initialisation
  score.log_every = 100
  score.checkpoint_every = 5000
  score.keep_checkpoints = 3

  # Classifier trained by cross-entropy (the classifier the purifier protects).
  config.classifier = clf = ml_collections.ConfigDict()
  clf.model = "wrn"
  clf.depth = 28
  clf.width = 10
  clf.batch_size = 128
  clf.num_steps = 80_000
  clf.lr = 0.1
  clf.optimizer = "sgd"  # "sgd" (momentum 0.9, nesterov, cosine decay) or "adam"
  clf.momentum = 0.9
  clf.weight_decay = 5e-4
  clf.grad_clip = 0.0
  clf.ema_rate = 0.999
  clf.ema_debias = True
  clf.log_every = 100
  clf.checkpoint_every = 5000
  clf.keep_checkpoints = 3

  # Multi-process runs (jax.distributed): a process whose peer died stops after this long.
  config.distributed = dist = ml_collections.ConfigDict()
  dist.heartbeat_timeout_seconds = 100
  dist.initialization_timeout = 300

  # Pictures and summary written at the end of training.
  config.report = report = ml_collections.ConfigDict()
  report.denoise_sigma = 0.25  # sigma of the one-step (Tweedie) denoising grid and PSNR gain
  report.eval_batch_size = 500
  report.num_grid_images = 16
  report.num_samples = 16  # annealed Langevin samples for the sample grid
  report.sampling_steps_each = 5
  report.sampling_step_lr = 6.2e-6  # NCSNv2 CIFAR-10 value (alpha_i = lr * sigma_i^2 / sigma_L^2)

  # Purification (ADP defaults, DESIGN §1): see jaxpure.purify.PurifySettings.
  config.purify = purify = ml_collections.ConfigDict()
  purify.sigma_n = 0.25
  purify.noise = "gaussian"  # "gaussian" or "binary"
  purify.method = "adp"  # "adp", "gd" or "langevin"
  purify.max_iter = 10  # T
  purify.lam = 0.05  # lambda
  purify.delta = 1e-3
  purify.tau = 1e-3
  purify.alpha_min = 1e-5
  purify.alpha_max = 1e-1
  purify.step_size = 1e-2  # gd / langevin
  purify.sigma_p = 0.25  # langevin
  purify.restarts = 10  # R

  # evaluate.py
  config.eval = ev = ml_collections.ConfigDict()
  ev.batch_size = 100
  ev.num_examples = 0  # 0 = the whole test split
  ev.seed = 1
  ev.grid_examples = 8
  ev.grid_restarts = 3

  # Attacks (evaluate.py --attacks a,b,...): shared threat model, then one section per attack.
  config.attack = at = ml_collections.ConfigDict()
  at.norm = "linf"  # "linf" or "l2"
  at.eps = 8 / 255
  at.batch_size = 100
  at.seed = 2
  at.sweep_attack = "pgd_eot_full"  # the epsilon sweep and gradient-masking check
  at.sweep_eps = (2 / 255, 4 / 255, 8 / 255, 16 / 255, 64 / 255)  # last: very large
  at.sweep_num_steps = 20
  at.sweep_n_eot = 4
  at.grid_examples = 8

  def attack(num_steps, step_size, n_eot, loss="ce"):
    return ml_collections.ConfigDict(dict(num_steps=num_steps, step_size=step_size,
                                          n_eot=n_eot, loss=loss))

  at.pgd_clf = attack(40, 2 / 255, 1)  # preprocessor-blind PGD on the bare classifier
  at.bpda_eot = attack(40, 2 / 255, 15)  # ADP's BPDA+EOT budget (DESIGN §1)
  at.bpda_eot_adp = attack(40, 2 / 255, 15)
  at.pgd_eot_full = attack(200, 2 / 255, 20)  # Lee & Kim 2023 style
  at.apgd_eot = attack(100, 2 / 255, 20)  # step_size unused: APGD starts at 2 eps
  # AutoAttack's rand version: one APGD-CE and one APGD-DLR run, each from a random start.
  at.apgd_eot.losses = ("ce", "dlr")
  at.apgd_eot.warm_restarts = 0  # further runs per loss from its best point
  return config
