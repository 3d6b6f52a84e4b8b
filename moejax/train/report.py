"""The end-of-run report printed by the binaries."""

from __future__ import annotations


def print_summary(summary, workdir: str) -> None:
  """The end-of-run report."""
  ev = summary.eval
  head = f"stopped by {summary.stopped} at step {summary.step}" if summary.stopped \
      else f"finished {summary.step} steps"
  print(f"\n{head}")
  line = f"  final train loss {summary.train_loss:.4f}   eval loss {ev['loss']:.4f}"
  if "perplexity" in ev:
    line += f" ({ev['bits_per_byte']:.3f} bits/byte, perplexity {ev['perplexity']:.2f})"
  else:
    line += f"   eval accuracy {ev['accuracy']:.2%}"
  print(line)
  if summary.baseline_loss is not None:
    print(f"  unigram baseline {summary.baseline_loss:.4f} nats: eval loss is "
          f"{ev['loss'] / summary.baseline_loss:.0%} of it")
  if summary.items_per_second > 0:
    print(f"  throughput {summary.items_per_second / 1e3:.1f}k {summary.item_name}/s")
  else:  # a resumed run that had nothing left to do, or a single step
    print("  throughput not measured: fewer than 2 steps ran in this process")
  print(f"  checkpoints {summary.checkpoint_dir}")
  print(f"  metrics     {workdir}/metrics.jsonl, {workdir}/tensorboard")
  if summary.plots:
    print(f"  plots       {', '.join(summary.plots)}")
  if summary.stopped:
    print("  run the same command to resume")
