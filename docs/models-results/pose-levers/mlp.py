import sys, json, time, math
sys.path.insert(0, "/work/wt/pose"); sys.path.insert(0, "/tmp/pose-exp")
import numpy as np, torch
from torch import nn
from heads2 import feats, y_all, tr_idx, va_idx, y_test, src
torch.set_num_threads(1)
def mlp(bb="lite0", hidden=512, dropout=0.5, epochs=40, lr=1e-3, wd=1e-2, ls=0.1, bs=128, tta=False, flip_train=False, seed=0):
    X = np.concatenate([feats(bb, "train", "plain"), feats(bb, "extra", "plain")])
    x, y = X[tr_idx], y_all[tr_idx]
    if flip_train:
        XF = np.concatenate([feats(bb, "train", "flip"), feats(bb, "extra", "flip")])
        x, y = np.concatenate([x, XF[tr_idx]]), np.concatenate([y, y])
    vxs = [X[va_idx]] + ([feats(bb, "val", "flip")] if tta else [])
    txs = [feats(bb, "test", "plain")] + ([feats(bb, "test", "flip")] if tta else [])
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Dropout(0.2), nn.Linear(x.shape[1], hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, 15))
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=wd)
    steps = epochs * math.ceil(len(x) / bs)
    sch = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    g = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    def acc(xs, yy):
        net.eval()
        with torch.no_grad():
            lo = sum(net(torch.from_numpy(a)) for a in xs) / len(xs)
        return float(np.mean(lo.argmax(1).numpy() == yy)), lo
    best = (-1, None, 0)
    t = time.monotonic()
    for ep in range(epochs):
        net.train()
        order = torch.randperm(len(xt), generator=g)
        for s in range(0, len(xt), bs):
            i = order[s:s+bs]
            loss = nn.functional.cross_entropy(net(xt[i]), yt[i], label_smoothing=ls)
            opt.zero_grad(); loss.backward(); opt.step(); sch.step()
        va, _ = acc(vxs, y_all[va_idx])
        if va > best[0]:
            best = (va, {k: v.clone() for k, v in net.state_dict().items()}, ep + 1)
    net.load_state_dict(best[1])
    te, _ = acc(txs, y_test)
    r = dict(tag="mlp", bb=bb, hidden=hidden, dropout=dropout, epochs=epochs, lr=lr, wd=wd, tta=tta, flip_train=flip_train, best_epoch=best[2], val=round(best[0], 4), test=round(te, 4), s=round(time.monotonic()-t, 1))
    print(json.dumps(r), flush=True)
if __name__ == "__main__":
    exec(sys.argv[1])
