"""Review: GRUModel observe / imagine / masked filter equal a hand loop over nn.GRUCell with the module's weights."""

def test_gru_equals_a_hand_gru_cell_loop():
    import torch, torch.nn.functional as F
    torch.set_num_threads(1)
    from dynamics import build_model
    from dynamics.base import LatentState
    torch.manual_seed(0)
    m = build_model("gru", {"shape": [6], "kind": "vector"}, {"discrete": True, "n": 5}, deter=10, hidden=8, embed=7).eval()
    cell = torch.nn.GRUCell(8, 10)
    g = m.core.gru
    with torch.no_grad():
        cell.weight_ih.copy_(g.weight_ih_l0); cell.weight_hh.copy_(g.weight_hh_l0); cell.bias_ih.copy_(g.bias_ih_l0); cell.bias_hh.copy_(g.bias_hh_l0)
    b, t = 3, 9
    obs = torch.randn(b, t, 6); act = torch.randint(0, 5, (b, t))
    first = torch.zeros(b, t, dtype=torch.bool); first[:, 0] = True; first[1, 4] = True; first[2, 8] = True
    def step(h, e, mask, a_onehot):
        x = F.silu(m.core.norm(m.core.inp(torch.cat([e * mask, mask, a_onehot], -1))))
        return cell(x, h)
    with torch.no_grad():
        post = m.observe(obs, act, first)
        emb = m.encoder(obs.reshape(b * t, 6)).reshape(b, t, -1)
        h = torch.zeros(b, 10); hs = []
        for s in range(t):
            fs = first[:, s, None].float()
            h = h * (1 - fs)
            a = F.one_hot(act[:, s], 5).float() * (1 - fs)
            h = step(h, emb[:, s], torch.ones(b, 1), a); hs.append(h)
        ref = torch.stack(hs, 1)
        assert (post["deter"] - ref).abs().max().item() < 1e-5, "observe"
        # imagine from the last posterior
        acts = torch.randint(0, 5, (b, 5))
        im = m.imagine(post.at((slice(None), -1)), acts)
        h = post["deter"][:, -1]; hs = []
        for s in range(5):
            h = step(h, torch.zeros(b, 7), torch.zeros(b, 1), F.one_hot(acts[:, s], 5).float()); hs.append(h)
        assert (im["deter"] - torch.stack(hs, 1)).abs().max().item() < 1e-5, "imagine"
        # decode consistency
        d = m.decode(im); d2 = m.decode(im.at((slice(None), 2)))
        assert (d[:, 2] - d2).abs().max().item() < 1e-5, "decode"
        # observe start= continuation
        p1 = m.observe(obs[:, :5], act[:, :5], first[:, :5]); p2 = m.observe(obs[:, 5:], act[:, 5:], first[:, 5:], start=p1.at((slice(None), -1)))
        assert (torch.cat([p1["deter"], p2["deter"]], 1) - post["deter"]).abs().max().item() < 1e-5, "start"
        # imagine with an observation-masked filter: loss path with mask = observed_prefix
        mask = torch.ones(b, t, dtype=torch.bool); mask[:, 6:] = False; mask[2, 8] = True
        st = m._filter(obs, act, first, mask)
        h = torch.zeros(b, 10); hs = []
        for s in range(t):
            fs = first[:, s, None].float(); h = h * (1 - fs)
            h = step(h, emb[:, s], mask[:, s, None].float(), F.one_hot(act[:, s], 5).float() * (1 - fs)); hs.append(h)
        assert (st["deter"] - torch.stack(hs, 1)).abs().max().item() < 1e-5, "masked"
        # masked filter suffix equals imagine from state at step 5 (seq 0,1)
        im2 = m.imagine(st.at((slice(None), 5)), act[:, 6:])
        assert (im2["deter"][:2, :2] - st["deter"][:2, 6:8]).abs().max().item() < 1e-5, "mask==imagine"
