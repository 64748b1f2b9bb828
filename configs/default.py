"""Shared defaults for every jaxpure config (NCSNv2 / ADP values of docs/design.md#1-the-method).

Data-set configs (`digits.py`, `mnist.py`, `cifar10.py`) start from `get_config()` here
and change only what differs. Pixels are in [0, 1] everywhere.
"""

import ml_collections
from ml_collections import config_dict


def remat_setting(value):
  """A purifier's `remat` field: a policy name, or the boolean of older configs (any type, so
  `remat = True` in a config file and `--config.purifiers.adp.remat=auto` both work)."""
  return config_dict.FieldReference(value, field_type=object)


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
  # DDPM++ (score.model = "ddpmpp", DiffPure's CIFAR-10 network) trained on the VP-SDE below.
  score.nf = 128
  score.ch_mult = (1, 2, 2, 2)
  score.num_res_blocks = 8
  score.attn_resolutions = (16,)
  score.dropout = 0.1
  # NCSNv2's annealed DSM noise levels.
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

  # The VP-SDE of time-conditioned score networks (Score SDE; DiffPure): beta(t) linear. The
  # one VP-SDE setting: training and diffusion purification both read it.
  config.sde = sde = ml_collections.ConfigDict()
  sde.beta_min = 0.1
  sde.beta_max = 20.0
  sde.t_eps = 1e-5  # training draws t ~ U(t_eps, 1)

  # Classifier trained by cross-entropy (the classifier the purifier protects).
  config.classifier = clf = ml_collections.ConfigDict()
  clf.model = "wrn"
  clf.depth = 28
  clf.width = 10
  clf.normalize_input = True  # (x - 0.5) / 0.5 inside the network; RobustBench's WRN: False
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
  report.vp_sampling_steps = 100  # DDPM ancestral steps from t = 1 (time-conditioned networks)

  # The defense: a purifier family (jaxpure/purifiers/), its restarts and the classifier.
  config.defense = defense = ml_collections.ConfigDict()
  defense.purifier = "adp"  # a family name; its settings are config.purifiers.<name>
  defense.restarts = 10  # R: purifications averaged (mean softmax) when the defense classifies

  # One section per purifier family; keys are the family's Settings fields.
  config.purifiers = ml_collections.ConfigDict()
  config.purifiers.adp = adp = ml_collections.ConfigDict()  # ADP defaults (docs/design.md#1-the-method)
  adp.sigma_n = 0.25
  adp.noise = "gaussian"  # "gaussian" or "binary"
  adp.method = "adp"  # "adp", "gd" or "langevin"
  adp.max_iter = 10  # T
  adp.lam = 0.05  # lambda
  adp.delta = 1e-3
  adp.tau = 1e-3
  adp.alpha_min = 1e-5
  adp.alpha_max = 1e-1
  adp.step_size = 1e-2  # gd / langevin
  adp.sigma_p = 0.25  # langevin
  # What a gradient through the steps keeps ("none": everything, the fastest; "step": only the
  # iterates, memory flat in T; "save_convolutions": the convolution outputs; "auto": the
  # fastest that fits config.attack.memory_budget_gb). True/False (older configs) = step/none.
  adp.remat = remat_setting("step")
  # DiffPure (docs/design.md#1-the-method): needs a time-conditioned network (score.model =
  # "ddpmpp"); its VP-SDE is the network's, config.sde (the one VP-SDE setting).
  config.purifiers.diffpure = dp = ml_collections.ConfigDict()
  dp.t_star = 0.1  # diffusion time t*
  dp.num_steps = 100  # reverse steps N (dt = t* / N = 1e-3)
  dp.sampler = "sde"  # "sde" (Euler-Maruyama), "ddpm" (ancestral) or "ddim"
  dp.remat = remat_setting("step")  # as adp.remat

  # evaluate.py
  config.eval = ev = ml_collections.ConfigDict()
  ev.batch_size = 100
  ev.num_examples = 0  # 0 = the whole test split
  ev.first_example = 0  # evaluate test examples first_example, first_example + 1, ...
  ev.seed = 1
  ev.scoring_runs = 1  # independent runs of the defense scoring each attacked point
  # Budget curves (robust accuracy against iterations and EOT samples, with the convergence
  # check) of this attack on the first budget_examples examples, when it is among --attacks;
  # 0 examples: none. A fixed-step-size attack (its trajectory gives the iteration curve).
  ev.budget_attack = "pgd_eot_full"
  ev.budget_examples = 64
  # The attack budget: "auto" searches it before the evaluation (the budget attack's steps,
  # then its EOT samples, doubled from the configured ones until a one-sided paired sign test
  # at budget_level says the last doubling broke no more examples, or the next one would pass
  # max_gradients_per_image gradient samples per image; then every exact-gradient attack runs
  # at the chosen budget), on budget_examples examples from budget_first_example (-1: right
  # after the reported ones); "fixed": the configured budgets as they are.
  ev.budget = "auto"
  ev.budget_first_example = -1
  ev.max_gradients_per_image = 8000
  ev.budget_level = 0.05
  # Resubmission robustness (docs/design.md#5-scoring-randomized-defenses): the unbiased estimate for M submissions from the N
  # scoring runs (0: M = N).
  ev.resubmissions = 0
  # The fixed-noise threat model (DESIGN §5): budget_attack's PGD on the defense with its
  # random draws fixed and known to the attacker; its own report section, never the headline.
  ev.fixed_noise = False
  ev.grid_examples = 8
  ev.grid_restarts = 3

  # Certified robustness by randomized smoothing (evaluate.py --certify; DESIGN §6): CERTIFY
  # and PREDICT (Cohen et al. 2019) of the smoothed classifier x -> argmax_c P(f(D(x + sigma
  # n)) = c) at each sigma (pixels), D the denoiser: "defense" (the family of
  # config.defense.purifier), "diffpure" (one-shot diffusion denoising at the time whose noise
  # is sigma; needs a time-conditioned network), "adp" (the Tweedie step x + sigma h(x)) or
  # "none" (plain Gaussian smoothing); denoise_steps > 0: that many of the family's own steps
  # after it. Beside each certified accuracy at radius r > 0, the upper bound: PGD (l2, radius
  # r; attack_steps of attack_step_scale r / attack_steps, attack_eot noise samples per
  # gradient) on the soft smoothed classifier, then PREDICT at the attacked point.
  config.certify = cert = ml_collections.ConfigDict()
  cert.sigmas = (0.12, 0.25, 0.5)
  cert.n0 = 100  # selection samples
  cert.n = 10_000  # estimation samples (Carlini et al.'s CIFAR-10 protocol: 100,000)
  cert.alpha = 0.001  # failure probability of each certificate
  cert.denoiser = "defense"
  cert.denoise_steps = 0  # 0: one-shot
  cert.batch_size = 32  # examples per batch
  cert.chunk = 1000  # noise samples per example at a time (memory: chunk x batch_size images)
  cert.radii = (0.0, 0.25, 0.5, 0.75, 1.0)  # l2, pixels
  cert.predict_n = 0  # PREDICT's samples (0: n)
  cert.attack_steps = 20  # 0: no attack (no upper bound)
  cert.attack_eot = 8
  cert.attack_step_scale = 2.5
  cert.num_examples = 0  # certify the first ones of the evaluated examples (0: all)

  # Attacks (evaluate.py --attacks a,b,...): shared threat model, then one section per attack.
  config.attack = at = ml_collections.ConfigDict()
  at.norm = "linf"  # "linf" or "l2"
  at.eps = 8 / 255
  at.batch_size = 100
  at.seed = 2
  at.eot_chunk = 0  # exact-gradient attacks: EOT samples differentiated at a time (0 = all)
  # The budget of a purifier's remat = "auto": the compiled temporary memory (GiB) an attack's
  # program may take. 0 = 80% of the accelerator's allocator limit, or 8 GiB on the CPU
  # (`jaxpure.purifiers.remat.default_budget_bytes`).
  at.memory_budget_gb = 0.0
  # Attacks through the purifier: weight of a DiffAttack-style deviation loss (the distance of
  # the purification path from the clean input's) added to their loss; 0 = none.
  at.deviation_weight = 0.0
  at.sweep_attack = "pgd_eot_full"  # the epsilon sweep and gradient-masking check
  at.sweep_eps = (2 / 255, 4 / 255, 8 / 255, 16 / 255, 64 / 255)  # last: very large
  at.sweep_num_steps = 20
  at.sweep_n_eot = 4
  at.grid_examples = 8

  def attack(num_steps, step_size, n_eot, loss="ce"):
    return ml_collections.ConfigDict(dict(num_steps=num_steps, step_size=step_size,
                                          n_eot=n_eot, loss=loss))

  at.pgd_clf = attack(40, 2 / 255, 1)  # preprocessor-blind PGD on the bare classifier
  at.bpda_eot = attack(40, 2 / 255, 15)  # ADP's BPDA+EOT budget (docs/design.md#1-the-method)
  at.bpda_eot_adp = attack(40, 2 / 255, 15)
  at.pgd_eot_full = attack(200, 2 / 255, 20)  # Lee & Kim 2023 style
  at.apgd_eot = attack(100, 2 / 255, 20)  # step_size unused: APGD starts at 2 eps
  # AutoAttack's rand version: one APGD-CE and one APGD-DLR run, each from a random start.
  at.apgd_eot.losses = ("ce", "dlr")
  at.apgd_eot.warm_restarts = 0  # further runs per loss from its best point
  # Forward-only purifications added to each iteration's loss estimate for APGD's decisions
  # (best point, step halving): they compare means over n_eot + decision_samples samples.
  at.apgd_eot.decision_samples = 0
  # Each run also offers its final iterate to the candidate choice beside its best point (the
  # best point is picked by noisy estimates; the choice judges with R fresh purifications).
  # It costs R purifications per candidate; on DiffPure digits it took APGD from 0.066 above
  # PGD to 0.009 (benchmarks/RESULTS.md, "APGD on randomized defenses").
  at.apgd_eot.final_candidate = True
  # The first step size in units of eps (AutoAttack's 2), and whether a halving sends the
  # iterate back to the best point so far (AutoAttack's rule: True). False here: on the noisy
  # EOT loss of a randomized defense the best point is partly the luckiest estimate, and
  # going back to it made APGD weaker than PGD on all three digits defenses; without it APGD
  # is no weaker (benchmarks/RESULTS.md, "APGD on randomized defenses").
  at.apgd_eot.initial_step = 2.0
  at.apgd_eot.restore_best = False
  # Exact gradient of a surrogate process with fewer purifier steps than the defense runs
  # (Lee & Kim 2023); reported as its own attack, not as the defense's exact gradient.
  at.pgd_eot_surrogate = attack(200, 2 / 255, 20)
  at.pgd_eot_surrogate.surrogate_steps = 10
  # Exact-gradient PGD whose every iterate is scored inside the loop by inloop_runs runs of the
  # defense (R purifications each, forward only); per example the iterate wrong in the most
  # runs (DiffHammer's selection, the resubmission threat model).
  at.pgd_eot_inloop = attack(200, 2 / 255, 20)
  at.pgd_eot_inloop.inloop_runs = 4
  return config
