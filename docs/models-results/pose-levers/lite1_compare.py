"""Lite0 vs Lite1 with train/ only, validated on the train/ photos of the build's validation split (566)."""
import sys, json
sys.path.insert(0, "/work/wt/pose"); sys.path.insert(0, "/tmp/pose-exp")
import numpy as np, torch
from heads2 import *  # noqa: F403 (features, splits, base recipe)
va0 = va_idx[src[va_idx] == 0]; tr0 = tr_idx[src[tr_idx] == 0]
for bb in ("lite0", "lite1"):
    X = feats(bb, "train", "plain")
    head, hist = train_head(X[tr0], y_all[tr0], X[va0], y_all[va0], 15, base, seed=0, progress=False)
    with torch.no_grad():
        val = float(np.mean(head(torch.from_numpy(X[va0])).argmax(1).numpy() == y_all[va0]))
        test = float(np.mean(head(torch.from_numpy(feats(bb, "test", "plain"))).argmax(1).numpy() == y_test))
    print(json.dumps(dict(bb=bb, data="train/ only; val = the train/ part of the validation split", n_train=len(tr0), n_val=len(va0), val=round(val, 4), test=round(test, 4))))
