"""A seconds-long variant of the digits config, for tests and for trying the commands: tiny
networks, a few training steps, 2 restarts x 3 purification steps, 2-step attacks."""

from configs import digits


def get_config():
  config = digits.get_config()
  for section in (config.score, config.classifier):
    section.update(batch_size=16, num_steps=4, log_every=2, checkpoint_every=2)
  config.score.ngf = 4
  config.classifier.width = 8
  config.report.update(num_samples=8, sampling_steps_each=1)
  config.defense.restarts = 2
  config.purifiers.adp.max_iter = 3
  config.eval.num_examples = 20
  config.attack.update(sweep_num_steps=2, sweep_n_eot=2, sweep_eps=(0.1, 0.5))
  for name in ("pgd_clf", "bpda_eot", "bpda_eot_adp", "pgd_eot_full", "apgd_eot",
               "pgd_eot_surrogate", "pgd_eot_inloop"):
    config.attack[name].update(num_steps=2, n_eot=2)
  config.attack.pgd_eot_inloop.inloop_runs = 2
  config.attack.pgd_eot_surrogate.surrogate_steps = 1
  # both losses (their heads switched inside one gradient) and a few decision samples
  config.attack.apgd_eot.update(warm_restarts=0, losses=("ce", "dlr"), decision_samples=2)
  config.eval.budget_examples = 0  # budget curves only where a test asks for them
  return config
