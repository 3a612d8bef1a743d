// C++ smoke test of the libtorch build: the ops are reachable through the dispatcher and agree with
// plain ATen on random inputs. Exit code 0 on success.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cstdio>

int main() {
  auto op = c10::Dispatcher::singleton()
                .findSchemaOrThrow("cbgan_ext::class_balancing_loss_forward", "")
                .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&)>();
  at::manual_seed(0);
  const at::Tensor logits = at::randn({64, 10}, at::kDouble) * 3;
  const at::Tensor w = at::rand({10}, at::kDouble) + 0.1;
  auto [loss, counts, probs, mean_probs] = op.call(logits, w);
  const at::Tensor p = at::softmax(logits, 1).mean(0);
  const double expect = (w * p * at::log(p)).sum().item<double>();
  const bool ok_loss = std::abs(loss.item<double>() - expect) < 1e-10;
  const bool ok_counts = at::equal(counts, at::bincount(logits.argmax(1), {}, 10));
  std::printf("cbgan_ext C++ smoke: loss %.12f vs ATen %.12f, counts %s\n", loss.item<double>(), expect,
              ok_counts ? "equal" : "DIFFER");
  if (!ok_loss || !ok_counts) return 1;
  std::printf("cbgan_ext C++ smoke: ok\n");
  return 0;
}
