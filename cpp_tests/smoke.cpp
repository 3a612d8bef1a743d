// C++ smoke test of the libtorch build: the ops are reachable through the dispatcher, agree with plain ATen
// on random inputs, and their C++ autograd kernels give the same gradients as ATen's autograd (a first and,
// for the projection, a second order). Exit code 0 on success.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/autograd.h>

#include <cstdio>

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
  if (!ok_loss || !ok_counts || !ok_grad || !ok_proj) return 1;
  std::printf("cbgan_ext C++ smoke: ok\n");
  return 0;
}
