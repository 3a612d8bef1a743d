// C++ smoke test of the libtorch build: the ops are reachable through the dispatcher, agree with plain ATen
// on random inputs, and their C++ autograd kernels give the same gradients as ATen's autograd (a first and,
// for the projection, a second order; spectral norm's W / σ with u, v constants, one layer and a model).
// Exit code 0 on success.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/autograd.h>

#include <cstdio>
#include <string>
#include <vector>

namespace {

bool close(const at::Tensor& a, const at::Tensor& b, const char* what) {
  const double err = (a - b).abs().max().item<double>();
  std::printf("cbgan_ext C++ smoke: %s max error %.3g\n", what, err);
  return err < 1e-10;
}

}  // namespace

int main() {
  auto op = c10::Dispatcher::singleton()
                .findSchemaOrThrow("cbgan_ext::class_balancing_loss_forward", "")
                .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&)>();
  at::manual_seed(0);
  const at::Tensor logits = (at::randn({64, 10}, at::kDouble) * 3).requires_grad_();
  const at::Tensor w = at::rand({10}, at::kDouble) + 0.1;
  auto [loss, counts, probs, mean_probs] = op.call(logits, w);
  const at::Tensor p = at::softmax(logits, 1).mean(0);
  const at::Tensor expect = (w * p * at::log(p)).sum();
  const bool ok_loss = std::abs(loss.item<double>() - expect.item<double>()) < 1e-10;
  const bool ok_counts = at::equal(counts, at::bincount(logits.argmax(1), {}, 10));
  std::printf("cbgan_ext C++ smoke: loss %.12f vs ATen %.12f, counts %s\n", loss.item<double>(),
              expect.item<double>(), ok_counts ? "equal" : "DIFFER");
  // gradients through the C++ autograd kernel
  const at::Tensor g = torch::autograd::grad({loss}, {logits})[0];
  const at::Tensor g_ref = torch::autograd::grad({expect}, {logits})[0];
  const bool ok_grad = close(g, g_ref, "class_balancing_loss gradient");

  // soft-label projection: gradient w.r.t. E of a gradient penalty on h (double backward)
  auto proj = c10::Dispatcher::singleton()
                  .findSchemaOrThrow("cbgan_ext::soft_label_projection_forward", "")
                  .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&)>();
  const at::Tensor h = at::randn({8, 12}, at::kDouble).requires_grad_();
  const at::Tensor E = at::randn({5, 12}, at::kDouble).requires_grad_();
  const at::Tensor y = at::softmax(at::randn({8, 5}, at::kDouble), 1);
  auto penalty_grad = [&](const at::Tensor& out) {
    const at::Tensor gh = torch::autograd::grad({out.pow(2).sum()}, {h}, {}, std::nullopt, true)[0];
    return torch::autograd::grad({gh.pow(2).sum()}, {E})[0];
  };
  const at::Tensor dE = penalty_grad(std::get<0>(proj.call(h, E, y)));
  const at::Tensor dE_ref = penalty_grad((at::mm(y, E) * h).sum(1));
  const bool ok_proj = close(dE, dE_ref, "projection penalty gradient w.r.t. E");

  // spectral norm: W / σ after one power iteration and its gradient w.r.t. W, against W / (uᵀ W_mat v) in
  // ATen with the op's returned u, v as constants (torch's semantics); dim 0 (conv) and dim 1 (transposed conv)
  using SNOut = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
  auto sn = c10::Dispatcher::singleton()
                .findSchemaOrThrow("cbgan_ext::spectral_norm_weight", "")
                .typed<SNOut(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, int64_t, double)>();
  auto sn_multi = c10::Dispatcher::singleton()
                      .findSchemaOrThrow("cbgan_ext::spectral_norm_weight_multi", "")
                      .typed<std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>, std::vector<at::Tensor>,
                                        at::Tensor>(at::TensorList, at::TensorList, at::TensorList, at::IntArrayRef,
                                                    int64_t, double)>();
  // torch's matrix view: dim to the front, the rest flattened (for dim <= 1 a transpose of 0 and dim)
  auto sn_matrix = [](const at::Tensor& w, int64_t dim) { return w.transpose(0, dim).reshape({w.size(dim), -1}); };
  auto sn_ref = [&](const at::Tensor& w, const at::Tensor& u, const at::Tensor& v, int64_t dim) {
    return w / at::dot(u, at::mv(sn_matrix(w, dim), v));  // u, v: constants (no grad)
  };
  bool ok_sn = true;
  std::vector<at::Tensor> ws, us, vs, Gs;
  for (int64_t dim : {0, 1}) {
    const at::Tensor w = at::randn({6, 5, 3, 3}, at::kDouble).requires_grad_();
    const at::Tensor u0 = at::randn({w.size(dim)}, at::kDouble), v0 = at::randn({w.numel() / w.size(dim)}, at::kDouble);
    const at::Tensor u = u0 / u0.norm(), v = v0 / v0.norm();
    const at::Tensor G = at::randn_like(w);
    auto [w_sn, u2, v2, sigma] = sn.call(w, u, v, dim, 1, 1e-12);
    const bool constants = !u2.requires_grad() && !v2.requires_grad() && !sigma.requires_grad();
    const at::Tensor dw = torch::autograd::grad({w_sn}, {w}, {G})[0];
    const at::Tensor w_sn_ref = sn_ref(w, u2, v2, dim);
    const at::Tensor dw_ref = torch::autograd::grad({w_sn_ref}, {w}, {G})[0];
    const std::string tag = "spectral_norm_weight dim " + std::to_string(dim);
    ok_sn = close(w_sn, w_sn_ref, (tag + " W / sigma").c_str()) && ok_sn;
    ok_sn = close(dw, dw_ref, (tag + " gradient w.r.t. W").c_str()) && ok_sn;
    if (!constants) std::printf("cbgan_ext C++ smoke: %s: u, v or sigma require grad\n", tag.c_str());
    ok_sn = ok_sn && constants;
    ws.push_back(w), us.push_back(u), vs.push_back(v), Gs.push_back(G);
  }
  // the whole-model op: one launch, gradients of both layers against the same ATen computation
  auto [m_sn, m_u, m_v, m_sigmas] = sn_multi.call(ws, us, vs, {0, 1}, 1, 1e-12);
  const auto m_dw = torch::autograd::grad({m_sn[0], m_sn[1]}, {ws[0], ws[1]}, {Gs[0], Gs[1]});
  const auto m_ref = torch::autograd::grad({sn_ref(ws[0], m_u[0], m_v[0], 0), sn_ref(ws[1], m_u[1], m_v[1], 1)},
                                           {ws[0], ws[1]}, {Gs[0], Gs[1]});
  ok_sn = close(m_dw[0], m_ref[0], "spectral_norm_weight_multi gradient w.r.t. W (layer 0)") && ok_sn;
  ok_sn = close(m_dw[1], m_ref[1], "spectral_norm_weight_multi gradient w.r.t. W (layer 1)") && ok_sn;
  if (!ok_loss || !ok_counts || !ok_grad || !ok_proj || !ok_sn) return 1;
  std::printf("cbgan_ext C++ smoke: ok\n");
  return 0;
}
