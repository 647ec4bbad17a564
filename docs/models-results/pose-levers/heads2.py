import sys, json, time
from dataclasses import replace
sys.path.insert(0, "/work/wt/pose"); sys.path.insert(0, "/tmp/pose-exp")
import numpy as np, torch
from export.data import stratified_split
from export.recipes import POSE_RECIPES
from export.train import train_head
torch.set_num_threads(1)
F = "/tmp/pose-exp/feats/"
y_train, y_extra, y_test = (np.load(F + f"y_{p}.npy") for p in ("train", "extra", "test"))
y_all = np.concatenate([y_train, y_extra])
src = np.concatenate([np.zeros(len(y_train), int), np.ones(len(y_extra), int)])
tr_idx, va_idx = stratified_split(y_all, 0.1, 0)
base = POSE_RECIPES["quick"]
def feats(bb, part, v):
    return np.load(F + f"{bb}_{part}_{v}.npy")
def run(bb, extra=True, flip_train=False, tta=False, norm=False, tag="", **kw):
    import os
    ex = feats(bb, "extra", "plain") if os.path.exists(F + f"{bb}_extra_plain.npy") else np.zeros((len(y_extra), 1280), np.float32)
    X = np.concatenate([feats(bb, "train", "plain"), ex])
    recipe = replace(base, **kw)
    tr = tr_idx if extra else tr_idx[src[tr_idx] == 0]
    x, y = X[tr], y_all[tr]
    if flip_train:
        XF = np.concatenate([feats(bb, "train", "flip"), feats(bb, "extra", "flip")])
        x, y = np.concatenate([x, XF[tr]]), np.concatenate([y, y])
    vx, tx = X[va_idx], feats(bb, "test", "plain")
    if tta:
        vx, tx = (vx + feats(bb, "val", "flip")) / 2, (tx + feats(bb, "test", "flip")) / 2
    if norm:
        mu, sd = x.mean(0), x.std(0) + 1e-6
        x, vx, tx = (x - mu) / sd, (vx - mu) / sd, (tx - mu) / sd
    t = time.monotonic()
    head, hist = train_head(x.astype(np.float32), y, vx.astype(np.float32), y_all[va_idx], 15, recipe, seed=0, progress=False)
    with torch.no_grad():
        val = float(np.mean(head(torch.from_numpy(vx.astype(np.float32))).argmax(1).numpy() == y_all[va_idx]))
        test = float(np.mean(head(torch.from_numpy(tx.astype(np.float32))).argmax(1).numpy() == y_test))
    best_ep = int(max(hist, key=lambda h: h["val_accuracy"])["epoch"])
    r = dict(tag=tag, bb=bb, extra=extra, flip_train=flip_train, tta=tta, norm=norm, **kw, n_train=len(x), best_epoch=best_ep, val=round(val, 4), test=round(test, 4), head_s=round(time.monotonic() - t, 1))
    print(json.dumps(r), flush=True)
    return r
if __name__ == "__main__":
    exec(sys.argv[1])
