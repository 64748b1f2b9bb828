"""DiffPure on CIFAR-10 (Nie et al. 2022), on imported networks, with its published protocol and
Lee & Kim 2023's.

Networks (imported): score_sde's DDPM++ `checkpoint_8.pth` as DiffPure vendors it (the EMA
weights, `--weights ema`; nf 128, 8 blocks, attention at 16) and RobustBench's `Standard`
WideResNet-28-10. Defense: diffuse to t* = 0.1, 100 Euler-Maruyama steps of the reverse VP-SDE
(dt = 1e-3), one purification per prediction (R = 1, as DiffPure classifies).
Attacks (l_inf eps 8/255, the first 512 test images):
- DiffPure's: AutoAttack's rand version, APGD-CE + APGD-DLR with EOT 20 (`apgd_eot`), here
  with exact gradients through every reverse step instead of the adjoint;
- Lee & Kim's: PGD with exact gradients, 200 steps, EOT 20 (`pgd_eot_full`).
APGD runs here with AutoAttack's own rule (restore of the best point at each halving, no
final-iterate candidate), as DiffPure's evaluation ran it; jaxpure's defaults differ
(docs/attacks.md).
Certification (`--certify`): Carlini et al. (ICLR 2023)'s CIFAR-10 protocol through the same
DDPM++ (one-shot denoiser): n0 100, n 100,000, alpha 0.001, sigma 0.25 / 0.5 / 1.0, with the
bracket's attack at each radius scored by PREDICT on 10,000 samples. Its cost:
`python benchmarks/estimate_protocol_cost.py --config configs/cifar10_diffpure.py --certify`.
"""

from configs import default


def get_config():
  config = default.get_config()
  s = config.score
  s.model = "ddpmpp"
  s.update(nf=128, ch_mult=(1, 2, 2, 2), num_res_blocks=8, attn_resolutions=(16,),
           dropout=0.1)
  config.classifier.model = "wrn"
  config.classifier.depth = 28
  config.classifier.width = 10
  config.classifier.normalize_input = False
  config.defense.purifier = "diffpure"
  config.defense.restarts = 1
  config.purifiers.diffpure.update(t_star=0.1, num_steps=100, sampler="sde")
  config.eval.num_examples = 512
  config.eval.batch_size = 64
  config.attack.eps = 8 / 255
  config.attack.batch_size = 16
  config.attack.eot_chunk = 4
  config.attack.apgd_eot.update(num_steps=100, n_eot=20, losses=("ce", "dlr"),
                                warm_restarts=0, initial_step=2.0, restore_best=True,
                                final_candidate=False)
  config.certify.update(sigmas=(0.25, 0.5, 1.0), n0=100, n=100_000, alpha=0.001,
                        denoiser="diffpure", denoise_steps=0, batch_size=16, chunk=250,
                        predict_n=10_000)
  config.attack.pgd_eot_full.update(num_steps=200, step_size=2 / 255, n_eot=20)
  return config
