"""The trials behind the BAGAN section's settings (their output is acgan_trial.jsonl): one method trained on the
section's data with the section's settings changed as given, evaluated at each length (resumed in between):

    python docs/bagan/acgan_trial.py SEED OUT_DIR ANNOTATOR.pt METHOD STEPS[,STEPS...] '{"setting": value, ...}'

One JSON line per length and generator (G as trained; its EMA when the run keeps one): the annotator's class
consistency on 2000 generated images (200 a class), its T-shirt accuracy, FD-annotator.
"""
import json
import sys

import torch

from cbgan_ext.pipeline import _bagan_data, bagan_gan_settings, resolve_config
from cbgan_ext.train.gan import GANTrainer, evaluate_run


def main(seed, out, annotator, method, steps_list, changes):
    torch.set_num_threads(1)
    cfg = resolve_config("default", sections=["bagan"])
    data = _bagan_data(cfg, seed)
    for steps in steps_list:
        s = dict(bagan_gan_settings(cfg["bagan"], method), **changes)
        s["steps"] = steps
        GANTrainer(data, out, method=method, seed=seed, progress=False, **s).run()
        for g in ("raw", "ema") if s.get("ema_start", 0) < steps else ("raw",):
            e = evaluate_run(out, "last", annotator=annotator, n=2000, fid="annotator", lpips_images=0, generator=g)
            print(json.dumps(dict(seed=seed, method=method, changes=changes, steps=steps, generator=g,
                                  class_consistency=e["class_consistency"], tshirt=e["class_accuracy"][0],
                                  fd=e["fd"])), flush=True)


if __name__ == "__main__":
    a = sys.argv[1:]
    main(int(a[0]), a[1], a[2], a[3], [int(s) for s in a[4].split(",")], json.loads(a[5]))
