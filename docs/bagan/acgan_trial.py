"""ACGAN at the BAGAN section's schedule for longer, or with the other class term (the trial behind the
section's ACGAN setting; its output is acgan_trial.jsonl):

    python docs/bagan/acgan_trial.py SEED OUT_DIR ANNOTATOR.pt ACGAN_AUX STEPS[,STEPS...]

Trains acgan on the section's data and settings to each STEPS in turn (resuming), and prints one JSON line per
length: the annotator's class consistency on 1000 generated images, FD-annotator, the class histogram.
"""
import json
import sys

import torch

from cbgan_ext.data import get_dataset
from cbgan_ext.pipeline import PRESETS, bagan_gan_settings
from cbgan_ext.train.gan import GANTrainer, evaluate_run


def main(seed, out, annotator, aux, steps_list):
    torch.set_num_threads(1)
    b = PRESETS["default"]["bagan"]
    data = get_dataset("fashion-mnist", "train", image_size=32, profile="bagan", seed=seed,
                       minority_class=b["minority_class"], drop_fraction=b["drop_fraction"])
    for steps in steps_list:
        s = dict(bagan_gan_settings(b, "acgan"), steps=steps, acgan_aux=aux)
        GANTrainer(data, out, method="acgan", seed=seed, progress=False, **s).run()
        e = evaluate_run(out, "last", annotator=annotator, n=1000, fid="annotator", lpips_images=0)
        print(json.dumps(dict(seed=seed, acgan_aux=aux, steps=steps, class_consistency=e["class_consistency"],
                              fd=e["fd"], histogram=e["histogram"])), flush=True)


if __name__ == "__main__":
    a = sys.argv[1:]
    main(int(a[0]), a[1], a[2], a[3], [int(s) for s in a[4].split(",")])
