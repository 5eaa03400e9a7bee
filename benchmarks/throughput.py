"""Training and inference images/s of each paper's network: Keras against PyTorch.

    python benchmarks/throughput.py [--models EXPERIMENT ...] [--precision fp32 bf16]
        [--steps 8] [--rounds 1] [--batch-size 128] [--no-memory] [--json OUT]

Keras runs the suite's real training step: the experiment's network, optimizer
(PyTorch-style coupled weight decay where the recipe has it), loss and input
pipeline (augmentation, normalisation, mixup) through `model.fit`, as run.py
runs it. PyTorch runs the same network (benchmarks/torch_port.py: the same
layers and parameter count, checked here) with torch.optim's equivalent of the
recipe's optimizer, on batches from the same input pipeline, eager, in NCHW and
in channels-last; Keras with XLA on and off (each framework's faster variant is
compared; all are recorded). Both run in this process with
the same batch, precision and threads, alternating, after warm-up steps.
Inference is `model.predict` over NumPy images against a `torch.no_grad()`
eval-mode loop that takes the same NumPy batches and returns NumPy logits. Peak
memory is measured in a child process per framework and network: peak resident
memory during a few training steps, above what the process held before them; on
a GPU, the peak of the framework's own device allocator over those steps.
Writes JSON and a markdown table of ratios into reports/.
"""

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

DEFAULT_MODELS = ["modified_resnet", "resnet_deep", "mobilenetv2", "se_resnet_mixup",
                  "resnet5m_row6", "resnet20"]
BATCH = 128  # images per step unless --batch-size says otherwise

# What was tried to make the Keras step faster, and what each gave (resnet20
# training, batch 128, fp32, 2 cores, images/s; the tables below are the
# benchmark's own measurements). The machine changed between rounds: the notes
# up to the bf16 one ran on an AVX2-only CPU, the later ones on an AVX-512 CPU
# with avx512_bf16, about 1.6x as fast.
NOTES = [
    "Benchmark fix: PyTorch's optimizer is built anew for each timed run. Reusing one "
    "left its momentum buffers in NCHW while channels-last was timed, which halved "
    "PyTorch's channels-last training (213 against 390-420).",
    "TensorFlow backend: XLA on (Keras's default) 236-248, XLA off 129-132. XLA fuses "
    "BatchNorm and the elementwise ops; without it TensorFlow runs BatchNorm as separate ops. "
    "Per convolution XLA:CPU is 1.1-1.8x slower than PyTorch's oneDNN (3x3, 16-64 channels, "
    "forward and backward), which is the rest of the gap; none of these XLA flags helped: "
    "xla_cpu_use_thunk_runtime=false 245, xla_cpu_use_onednn 248, "
    "xla_cpu_experimental_onednn_custom_call 232-242, xla_cpu_use_xnnpack 228-240; "
    "one inter-op thread 236.",
    "PyTorch backend, Keras 3.15 as shipped: 320-343. Its convolutions copy every NHWC "
    "activation to contiguous NCHW and then to channels-last (aten::copy_ was 14% of the "
    "step in torch.profiler), and its BatchNorm is built from separate mean, square and "
    "multiply ops (about a fifth of the step).",
    "models/native.py: on the PyTorch backend Conv2D and DepthwiseConv2D hand the NHWC tensor "
    "to oneDNN as the channels-last view it already is, and BatchNormalization calls PyTorch's "
    "fused batch_norm: 370 with the convolution alone, 417-452 with both, i.e. level with or "
    "ahead of eager PyTorch in the same process. TensorFlow and JAX keep Keras's layers.",
    "With TensorFlow loaded in the process, PyTorch's own training ran at about half its "
    "speed (205 against 408 img/s in the PyTorch-backend process, same run), so the "
    "TensorFlow rows' ratios flatter Keras; compare TensorFlow's Keras numbers with the "
    "PyTorch numbers of the other processes.",
    "jit_compile=True on the PyTorch backend (torch.compile through Keras): 229-261, slower "
    "than eager, so eager is what run.py uses there.",
    "Benchmark fix: the PyTorch port padded every 'same' convolution with a separate F.pad "
    "(a copy of each activation) where PyTorch code writes Conv2d(padding=1); symmetric "
    "padding is now the convolution's own (Keras's extra bottom/right pixel keeps F.pad). "
    "PyTorch's ResNet-20 inference went from about 1,300 to 1,540-1,610 img/s, which turned "
    "Keras's inference lead into a gap of 22-25% (paired, same process).",
    "Keras's Layer.__call__ costs about 0.2 ms a layer on the PyTorch backend (structure and "
    "dtype checks, call-context bookkeeping, torch module hooks): 21 ms of a batch-1 ResNet-20 "
    "forward, against 3 ms for eager PyTorch. models/native.Network, the suite's functional "
    "model, calls the call() of plain layers directly on that backend (mixed precision, masks "
    "and other layers keep __call__): 9 ms at batch 1; ResNet-20 inference at batch 128 went "
    "from 0.75-0.78 to 0.86-0.90 of eager PyTorch (paired runs). The rest of that gap, about "
    "6 ms a forward at any batch size, is Keras's graph walk (per-node argument mapping and "
    "output flattening through torch's pytree), variable reads and each layer's Python; "
    "torch.profiler shows the same kernels, in the same number, on both sides.",
    "The torch-style optimizers (coupled weight decay) updated one variable at a time "
    "through about ten Keras ops each; on the PyTorch backend they now use torch._foreach "
    "kernels, as Keras's own SGD and Adam do there: a ResNet-20 update (59 variables) "
    "14.0 -> 3.4 ms for SGD, 74.7 -> 16.0 ms for Adam.",
    "bf16 on the AVX2 machine (no AVX-512 or AMX): oneDNN has no bf16 convolution there, so "
    "PyTorch (and Keras on it) runs bf16 convolutions in aten::_slow_conv2d_forward "
    "(im2col and a GEMM; 99.9% of a bf16 convolution's time in torch.profiler): 116 ms "
    "against 17 ms in fp32 for one 3x3 16-channel convolution of 128 images. Nothing on "
    "the Keras side can make bf16 faster than fp32 on such a CPU.",
    "torch.compile through Keras (jit_compile=True) for prediction: 1,099 img/s against 1,233 "
    "for the eager port before the padding fix; dynamo breaks the graph at Keras layers and hits its recompile limit, "
    "while torch.compile of the whole PyTorch module reached 1,765 (ResNet-20, batch 128).",
    "Page faults (AVX-512 machine): glibc gives every allocation above its mmap threshold "
    "fresh pages and returns freed memory to the kernel, so each batch faulted its "
    "activations in again: ResNet-20 inference at batch 128 took ~30,000 page faults and "
    "35 of ~75 ms in the kernel a batch, for eager PyTorch and Keras alike. "
    "training/allocator.py raises glibc's mmap and trim thresholds to 1 GiB on the PyTorch "
    "backend (run.py and this benchmark, for the whole process, so PyTorch gets it too): "
    "no faults, inference 75 -> 40-45 ms a batch, training 792 -> 933 (Keras) and 780 -> 966 "
    "(PyTorch) for ResNet-20, 108 -> 147 and 120 -> 142 for ModifiedResNet "
    "(reports/throughput_default_malloc.md is this benchmark without it).",
    "native.Network now runs a plan built once per training flag and releases each "
    "activation after its last reader; Functional's walk kept every activation alive until "
    "the call returned, so with glibc's defaults inference faulted 3x as many pages "
    "(11.7k against ~30k a batch; 59-63 ms against 80-106 for eager PyTorch, same process). "
    "The plan binds the argument shapes a CNN records (one tensor, or a list for Add and "
    "Multiply) by index instead of Keras's tree walks, and the kernels take torch tensors "
    "without convert_to_tensor's dispatch: a batch-1 ResNet-20 forward 4.0 -> 2.7 ms "
    "(eager PyTorch 1.2 ms); what is left is the outer Model.__call__ and each layer's "
    "Python, about 1.5 ms a forward.",
    "bf16 on the AVX-512 machine (avx512_bf16, no AMX): oneDNN has bf16 convolutions there. "
    "Keras's mixed precision went through Keras's full __call__ per layer (input casts, "
    "autocast scopes) and its BatchNorm cast each activation to float32 and back: ResNet-20 "
    "1,080 img/s against 1,302 for PyTorch AMP. Network's plan now does those casts and "
    "scopes itself (bit-equal to Functional.call), and BatchNorm hands PyTorch the bf16 "
    "input with float32 statistics, which its kernel computes in float32: 1,413 against "
    "1,381, 1.50x Keras's fp32.",
    "MobileNetV2 fp32 inference (AVX-512 machine) was 0.72 of PyTorch in the benchmark run; "
    "its activations are large (128 x 32 x 32 x 112 floats, 59 MB), and in a separate "
    "paired script the PyTorch port took 780-820 ms a batch with 400,000 page faults against "
    "190-235 ms and none for Keras: with such tensors the state of the glibc heap, not either "
    "framework's compute, decides. Not resolved.",
    "TensorFlow backend on the AVX-512 machine: XLA off trained ResNet-20 at 725 img/s "
    "against 458 with XLA (on the AVX2 machine XLA was the faster, 243 against 130), still "
    "below Keras on PyTorch (971); run.py keeps Keras's default there.",
    "The input pipeline (crop, flip, normalisation on the host) is 0.6-1.2% of a training "
    "step (benchmarks/augment.py), and the weight decay is part of the optimizer's update "
    "(no extra loss terms), so neither was a lever.",
    "Where the training gap of the large networks is (resnet5m_row6, fp32, AVX-512 machine, "
    "paired in one process): under cProfile, 10 steps spent 6.41-6.43 s in the backward pass "
    "on Keras against 6.27-6.42 s on PyTorch, 2.57-2.62 against 2.56-2.62 s in the forward "
    "convolutions and 0.25-0.28 s in BatchNorm on both; Python outside the kernels is under "
    "1% of a step; neither side page-faults once warm (getrusage). Keras's plan leaves the "
    "same kernels with the same inputs; the 2-5% that PyTorch's port stays ahead in most "
    "runs (in the order PyTorch, Keras, Keras, PyTorch, ...: Keras 129-134, PyTorch 132-138 "
    "img/s) is of the size of one side's run-to-run spread, and no op, copy or allocation "
    "accounts for it.",
    "Conv2D and DepthwiseConv2D with a bias: Keras adds it in a second pass over the whole "
    "activation after the convolution; the native layers now hand it to the convolution, as "
    "PyTorch's Conv2d does. resnet_deep (21 biased convolutions) trains at 73-76 img/s "
    "against 71 before, PyTorch 76-77 in the same process.",
    "Inference (float32): native.Network folds a BatchNormalization that only reads a "
    "convolution into that convolution's kernel and bias, cached until a variable of the "
    "pair changes, and a ReLU that only reads a fresh activation overwrites it (what "
    "nn.ReLU(inplace=True) does). Paired in one process (Keras, PyTorch, PyTorch, Keras, "
    "...): MobileNetV2 706-742 img/s with the fold alone (PyTorch 527-548 in that process), "
    "936-997 with both (PyTorch 707-740); resnet5m_row6 1.04x, modified_resnet 1.03x and "
    "ResNet-20 1.10x eager PyTorch. "
    "resnet_deep's BatchNorms each read a ReLU (or the input), not a convolution, so nothing "
    "folds there. The PyTorch port (BatchNorm2d and nn.ReLU() as modules of their own) does "
    "neither.",
    "The same fold under mixed precision (computed from the float32 variables, cast to bf16 "
    "once): bf16 inference, paired, modified_resnet 0.92 -> 1.04x, ResNet-20 0.87 -> 0.995x, "
    "MobileNetV2 0.92 -> 1.29x eager PyTorch with AMP; the logits stay within bf16 rounding "
    "of Keras's unfolded layers (0.4% of their range in the test).",
    "Benchmark: the rounds alternate which framework runs first, since the first run after "
    "the other framework's meets the heap and caches that run left.",
    "In-place ReLU in training: on the PyTorch port, nn.ReLU(inplace=True) trained 1.010x "
    "(ResNet-20) and 1.022x (ModifiedResNet) as fast as nn.ReLU() (paired, 4 rounds): no new "
    "activation to allocate and write. native.Network's plan now lets a ReLU that is the only "
    "reader of a Conv, BatchNorm or Add output overwrite it in training too. The native layers "
    "return an NHWC permutation (a view) of PyTorch's channels-last result, and an in-place op "
    "on a view makes autograd copy the whole gradient in the backward pass (CopySlices), so the "
    "ReLU overwrites the channels-last tensor and permutes it again; the gradients are those of "
    "Functional's walk (tested). The port keeps F.relu as the papers' PyTorch code writes it.",
    "Benchmark fix: Keras's ZeroPadding2D before papers 000-003's stride-2 convolutions was "
    "ported as F.pad and a Conv2d without padding, a copy PyTorch code (Conv2d(padding=1)) "
    "does not make; the port now pads in the convolution, and so does native.Network's plan "
    "(a ZeroPadding2D that only feeds a valid convolution becomes its padding).",
    "Fixed cost of a training step (ResNet-20 at batch 2, where the kernels take little): "
    "Keras 11.8-12.8 ms against 6.7-7.2 ms for eager PyTorch, i.e. ~5 ms, 3-4% of a "
    "batch-128 step. Of it, BatchNorm's moving averages through Variable.assign and four ops a "
    "layer (now updated in place, two kernels a statistic), keras.ops.convert_to_tensor on each "
    "gradient in the torch-style optimizers (now torch's .to) and keras.ops.pad in the option-A "
    "shortcut (now F.pad): ~3.0-3.8 ms above PyTorch afterwards. The rest is Keras's "
    "train_step itself (trainable_weights walked over all layers three times a step, the "
    "losses property, compute_loss and the accuracy metric, the PyDataset's DataLoader). "
    "ResNet-20 training, paired in one process, 6 rounds: 1.064x eager PyTorch.",
    "In-place residual Add: the papers' PyTorch blocks accumulate the shortcut into the "
    "BatchNorm's output (`out += self.shortcut(x)`), which trained the port's ResNet-20 1.015x "
    "as fast as out-of-place (paired, 6 rounds). The port now does so wherever an Add is the "
    "only reader of a fresh BatchNorm, Conv or Add output, and native.Network's plan does the "
    "same (through the channels-last tensor under autograd).",
    "Benchmark fix: torch.compile's column. Dynamo caches compilations per code object, and "
    "every network's port shares TorchPort.forward; past its recompile limit (8 compilations: "
    "four networks, training and inference) it ran the port eagerly, warning only in the log. "
    "From the fifth network on (resnet5m_row6, resnet20 and every bf16 row) the earlier "
    "reports' 'compiled' numbers were eager ones. Each compiled run now starts from "
    "torch._dynamo.reset().",
    "Page faults (ResNet-20, fp32, before the in-place Add; getrusage over 10 steps after "
    "warm-up): the port 6,100-14,600, Keras 19-31, with glibc's thresholds raised for both; "
    "under torch.profiler the port's out-of-place ReLU (clamp_min) took 113 ms of self time in "
    "6 steps against 7 ms for Keras's in-place one.",
    "Input pipeline on a GPU (H100, JAX): run.py built each batch in the training thread, and "
    "a steady ModifiedResNet epoch took 15.5 s, 12.4 s of it building batches (its Pillow "
    "rotation and colour jitter), resnet_deep 10.4 s. CifarBatches now builds the next 2N "
    "batches in N threads (run.py --input-threads, default half the cores up to 8; the same "
    "batches): 5.7 s and 3.8 s (reports/epochs_gpu_h100.md). The benchmark feeds PyTorch from "
    "the same threaded pipeline. With 8 threads ModifiedResNet trains near what its "
    "augmentation delivers (about 12,000 images/s: 32 thread-seconds an epoch), on both "
    "frameworks, so its GPU ratio says little about the network.",
    "GPU timing windows: 20 timed steps are 0.1-0.4 s on an H100, and repeated runs moved by "
    "up to 2x (ModifiedResNet fp32 inference 56,000 and 37,000 images/s; training 15,300 and "
    "22,500); reports/throughput_gpu_h100.md is timed over 200 steps. On a CPU a step takes "
    "0.1-2 s, so 8 steps are a window of seconds.",
    "Even 200 steps are short for GPU inference: MobileNetV2's fp32 inference (JAX) was 0.94x "
    "eager PyTorch over 200 batches (1.3 s) and 1.22x over 800 batches in the next run on the "
    "same machine (reports/throughput_gpu_h100_mobilenetv2_steps800.md; training 1.71x and "
    "1.60x).",
    "Spread (AVX-512 machine, 5 rounds, each round's own Keras/PyTorch ratio shown after the "
    "median): fp32 training ratios moved by 0.1-0.3 between rounds of a run on a loaded "
    "machine (resnet20 0.87-1.20, and 0.66-1.01 in a run while the machine ran 10-15% "
    "slower than in the run before) and by 0.02-0.25 on a quiet one (resnet20 1.00-1.25; "
    "0.87-1.05 in the 2026-11-23 report). bf16 over fp32 compared rows timed minutes apart, not "
    "paired: resnet20 "
    "1.43x, 1.60x, 1.35x and 1.44x in four runs (PyTorch 1.39x and 1.47x in the last two); "
    "they are now paired by round (below): 1.54x, rounds 1.40-2.49, on the loaded machine; "
    "1.49x, rounds 1.40-1.51 (PyTorch 1.37x), in the 2026-11-23 report; 1.41x, rounds 1.22-1.79 "
    "(PyTorch 1.36x), in a run of ResNet-20 alone with 10 rounds right after it. Per "
    "operator (TorchDispatchMode, 4 steps) its convolutions run 1.5x (backward) and 1.9x "
    "(forward) faster in bf16, but its BatchNorms (16-64 channels, PyTorch's kernel on "
    "both sides) not at all: 15.7 against 15.9 ms a step, a fifth of the bf16 step; and "
    "Keras's fixed cost of a step (27.3 against 20.6 ms for eager PyTorch at batch 8 in "
    "bf16) weighs more in this short step (~95 ms at batch 128). "
    "(An earlier run's ranges divided by each round's faster PyTorch layout; the rounds now "
    "use the layout the median reports, "
    "channels-last in every row there, so that the median ratio always lies within its "
    "range.)",
    "Dropout (models/native.py's Dropout): resnet_deep trained at 0.96x eager PyTorch "
    "(rounds 0.83-0.99; 0.91-1.00 in a separate paired run of 6 rounds). Under "
    "torch.profiler its nine dropout masks' bernoulli_ took 1.4-1.7 s of 6 steps on both "
    "sides, about a sixth of the step: PyTorch's CPU bernoulli_, which nn.Dropout and Keras's "
    "torch backend both use, takes about 6 ns an element. The layer now draws 32 random bits "
    "an element from NumPy's SFC64 (seeded from the layer's SeedGenerator) and compares them "
    "with round(rate * 2**32) on PyTorch's threads: a 128x32x32x64 dropout forward and "
    "backward 19 ms against 59 ms for torch.nn.functional.dropout. resnet_deep training: "
    "1.17x (1.15-1.20, 6 paired rounds), 1.16x, 1.16x and 1.12x in the last three reports; "
    "bf16 1.23x, 1.19x and 1.28x.",
    "The five networks without dropout run the very same kernels on both sides. oneDNN's "
    "verbose log of 4 ModifiedResNet training steps lists the same 176 primitives with the "
    "same shapes, layouts and implementations (brg_conv_fwd:avx512_core and its backward "
    "passes) for Keras and the port, 2,947 against 2,957 ms. Timed per operator "
    "(TorchDispatchMode, 4 rounds of 2 steps), Keras's operators took 0.96-1.01x the port's "
    "time (modified_resnet 3,349 against 3,329 ms, resnet20 462 against 482, se_resnet_mixup "
    "6,569 against 6,531, mobilenetv2 2,792 against 2,827, resnet5m_row6 in bf16 2,318 "
    "against 2,301), 57-88% of it in convolutions. Keras saves the port's out-of-place ReLU "
    "and part of its backward (1% of the operators' time in modified_resnet, 3.5% in "
    "mobilenetv2, 7% in resnet20) and spends about 1% on small operators the port does not "
    "issue: the NHWC views (permute), kernels copied between Keras's (h, w, in, out) "
    "variables and oneDNN's (out, h, w, in) layout, and Keras's Adam, which made more passes "
    "than torch.optim's (before the fused kernels below). Under cProfile 92% of 10 bf16 "
    "resnet5m_row6 steps is the backward "
    "pass, the convolutions and BatchNorm. So these five train level with eager PyTorch "
    "(medians 0.97-1.06 in a quiet run, bf16 0.96-1.04; 0.92-0.99 and 0.89-1.00 on a loaded "
    "machine whose rounds ranged from 0.66 to 1.14; in the 2026-11-23 report the four besides "
    "MobileNetV2 0.94-1.02, rounds 0.87-1.07, and bf16 0.96-1.05, rounds 0.52-1.24), "
    "and being ahead of it by more than "
    "the noise would take a faster convolution than oneDNN's.",
    "MobileNetV2 in bf16 trained at 0.88x its fp32 speed (PyTorch AMP 0.94x). Its three "
    "stride-2 depthwise convolutions were most of the difference: for them oneDNN's bf16 "
    "backward-data pass is brgconv_strided (one channel per group), 115 ms against 4.4 in "
    "fp32 for the 128x168x32x32 layer, 67 against 1.3 for 224x16x16, 99 against 0.7 for "
    "672x8x8 (forward and kernel gradient are fast in bf16). models/native.py now computes "
    "only that input gradient in float32 (cast in, one bf16 rounding out; within bf16 "
    "rounding of float64 in the test; 8.6, 2.4 and 1.3 ms with the casts): MobileNetV2 "
    "bf16 training 156 -> 261 img/s, 1.54x Keras's fp32 and 1.59x PyTorch AMP, in a run of "
    "2 rounds; 235 img/s, 1.35x fp32 and 1.50x AMP in the next report's 5 rounds. The "
    "PyTorch port keeps what AMP does.",
    "bf16 BatchNorm (AVX-512 machine): PyTorch's channels-last kernel, which both sides "
    "call, vectorises over the channels and slows down in bf16 where they are not a "
    "multiple of 16: forward and backward over 128x32x32 pixels took 5.8 ms for 24 "
    "channels and 5.5 ms for 3, and in MobileNetV2's bf16 step its three 168-channel "
    "BatchNorms at 32x32 took 59 ms, about as long as in float32 (per operator, "
    "TorchDispatchMode), while 176 channels ran at half their float32 time. "
    "models/native.py now runs those BatchNorms on a column view of the same memory "
    "(rows of several pixels, a multiple of 32 columns) with PyTorch's statistics and "
    "inference kernels, folding the column statistics into each channel's exactly: 2.5 ms "
    "for 24 channels, 0.6 ms for 3, 51 ms for the three 168-channel layers; within bf16 "
    "rounding of float64 in the test, closer than PyTorch's kernel. Channels that are a "
    "multiple of 16, small activations with 64 channels or more (232 over 8x8: 1.5 ms both "
    "ways; 268 over 4x4: 0.6 against 0.45 ms) and float32 (16 channels: 2.5 against 1.9 "
    "ms; ResNet-20's fp32 step 0.93x in a paired run) keep PyTorch's kernel. Paired runs "
    "of MobileNetV2's bf16 training step, column view against PyTorch's kernel: 0.98x, "
    "1.00x, 1.04x and 1.17x (20, 10, 60 and 30 rounds): the gain is of the size of this "
    "machine's noise. The PyTorch port keeps BatchNorm2d.",
    "A bf16 ReLU computed on the bits (an int16 threshold that zeroes every negative "
    "number and passes NaNs as relu_ does) took 0.04 against 0.15 ms for 128x32x32x16 and "
    "1.0 against 2.2 ms for 168 channels, but trained no faster in paired runs "
    "(MobileNetV2 0.99x over 30 rounds, ResNet-20 0.98x), so it was not kept.",
    "Benchmark fix: the bf16 speed-up over fp32 compared rows timed minutes apart. Each "
    "round now times every requested precision of a network in turn, and the speed-up is "
    "the median of the rounds' own bf16/fp32 ratios, given with their range.",
    "Optimizer updates on a CPU (PyTorch backend): Keras's multi-tensor SGD and Adam make "
    "five to ten passes over every variable and allocate temporaries; torch.optim's default "
    "on a CPU loops over the variables with in-place ops; its fused kernels "
    "(_fused_sgd_, _fused_adam_) make one pass. The torch-style SGD and Adam now call the "
    "fused kernels there (Adam with its epsilon rescaled by 1/sqrt(1 - beta_2**t), which "
    "keeps Keras's placement of it; tested with gradients near epsilon): resnet5m_row6's "
    "update 6.3 -> 1.8 ms (torch.optim's loop 3.1), se_resnet_mixup's 7.4 -> 6.1 (its "
    "clipvalue, clipped one variable at a time by Keras, is most of that; the loop with "
    "clip_grad_value_ 5.2), modified_resnet's Adam 8.8 -> 1.5 (4.6), ResNet-20's 1.0 -> "
    "0.4 (0.5): under 1% of a training step. The PyTorch port keeps torch.optim's default.",
    "An in-place backward for the in-place ReLU (the incoming gradient overwritten by "
    "threshold_backward where nothing else holds it, judged by reference counts) halved "
    "that op's time: MobileNetV2's fp32 step 66 -> 29 ms of threshold_backward, ResNet-20's "
    "5.5 -> 2.9 ms. Paired end to end it gave 1.02x (MobileNetV2 fp32, 16 rounds) and 1.00x "
    "(ResNet-20, 20 rounds). Not kept: reference counts do not see a gradient that a tensor "
    "hook has stored (such a gradient was overwritten in a test), for at most 2% of a step.",
    "Where MobileNetV2's bf16 step goes (per operator, TorchDispatchMode, 4 steps): its "
    "pointwise convolutions run mostly 1.6-2.8x faster than in fp32, its depthwise ones "
    "1.1-1.4x at 32x32, forward and backward (the 112-channel depthwise kernel gradient is "
    "slower in bf16: 6.9 against 4.8 ms alone), BatchNorm 1.5x, ReLU and its backward 2x; "
    "fp32 811-859 ms a "
    "step, bf16 474-605 ms in three runs of the same script minutes apart. That spread is "
    "the machine's: a separate benchmark run of MobileNetV2 alone the same day gave bf16 "
    "1.72x fp32 (rounds 1.46-1.80), the 2026-11-23 report 1.68x (1.54-1.78) "
    "and the report before it 1.36x (1.31-2.19).",
    "Where ResNet-20's bf16 speed-up stops (per operator, batch 128, channels-last, each "
    "timed alone, medians of 5 alternating repetitions; bf16 over fp32): convolution "
    "forward 1.8-2.0x and input gradient 1.8-2.2x, but kernel gradient only 1.3-1.5x "
    "(16 channels at 32x32: 1.05 against 1.48 ms) and BatchNorm forward and backward "
    "0.95-1.14x. Weighted by its fp32 step's operators (convolution backward 64 ms, forward "
    "31, BatchNorm 17, the rest 18), those bound the step at about 1.6x with nothing around "
    "the kernels; the benchmark measures 1.4-1.5x. Tried, none faster: the kernel gradient as nine shifted GEMMs over the padded "
    "activation (4.7 ms for 16 channels in bf16), or on NCHW tensors (1.85 against 1.56 ms); "
    "the input gradient as a forward convolution with the flipped kernel (0.99-1.07x of "
    "convolution_backward's); BatchNorm statistics as a GEMM with a ones vector (0.12 "
    "against 0.47 ms, but PyTorch 2.13's CPU matmul cannot return float32 from bf16, and "
    "bf16 sums are too coarse for the statistics). Keras's fixed cost, measured where the "
    "kernels take little (batch 8, bf16): 15.8 ms a step against 12.4 for eager PyTorch, "
    "and a train_step that caches the trainable variables and clears their gradients "
    "directly (instead of walking the layers three times a step and zero_grad) saved 0.3 "
    "ms of it (1.013x, 12 paired rounds): 0.3% of a batch-128 step, so it was not kept.",
    "How close fp32 convolutions are to this CPU's limit (oneDNN's brg_conv avx512_core, "
    "which both sides run; batch 128, channels-last, glibc's thresholds raised as in the "
    "benchmark, 3 runs): 3x3 convolutions forward 439-447 GFLOP/s at 64 channels over "
    "32x32, 493-500 at 128 over 16x16, 521-527 at 256 over 8x8; backward 405-412, 453-461 "
    "and 481-482. The fastest would be 64 float32 flops a cycle per core at about 4.1 GHz "
    "(two 512-bit FMA units busy every cycle), about all these cores do, and the layers of "
    "modified_resnet, resnet5m_row6 and se_resnet_mixup run at 77-100% of it, with the "
    "same kernels on both sides; what else differs is in the 9-12% of the step outside the "
    "convolutions, of the size of the rounds' spread. Without the raised thresholds the "
    "64-channel layer ran at 305-309 GFLOP/s forward: a fresh 34 MB output is page-faulted "
    "in on every call. Splitting its batch into 4 convolutions of 32 images gave no gain "
    "then (the concatenation costs what the split saves) and none with the thresholds "
    "raised. (torch.mm on 4096x4096 float32 reached 184-196 GFLOP/s here, so a large "
    "matmul is no yardstick on this machine.)",
    "AVX2-only machine (2-core Zen 3, fp32; reports/throughput_benchmark_avx2.md): a first "
    "run of 3 rounds put se_resnet_mixup at 0.87x (rounds 0.73-1.21) and ResNet-20 at 0.85x "
    "while PyTorch alone swung between 15 and 25 img/s on se_resnet_mixup. oneDNN's verbose "
    "log of 4 se_resnet_mixup training steps then listed the same 708 primitives for Keras "
    "and the port (brg_conv_fwd:avx2, brg_conv_bwd:avx2, jit:avx2 kernel gradients, "
    "brgconv_strided for the stride-2 input gradients, the same layouts), 15,873 against "
    "15,841 ms, about 92% of the step; paired step-only rounds gave 1.005x (10 rounds, "
    "0.999-1.010). Rerun on the quiet machine: training 0.99-1.08x with every round within "
    "0.97-1.09, inference 1.01-1.34x, peak memory 0.74-1.05x. What is left of resnet5m_row6's "
    "0.99x there (TorchDispatchMode, each call timed): the residual and gradient-accumulation "
    "adds are the same calls with the same strides and times on both sides (35.8 against "
    "37.9 ms for the fifteen 128x32x32x64 ones); the only operator Keras adds is the copy of each "
    "kernel gradient from oneDNN's layout back into its (h, w, in, out) variable, about 4 ms "
    "of a 2.2 s step, while the port spends about 2.5 ms on torch.optim's separate "
    "weight-decay adds. Paired step-only rounds right after that report (10 rounds of 4 "
    "steps, alternating which framework goes first): modified_resnet 0.996x (0.986-1.007), "
    "resnet5m_row6 0.995x (0.988-1.001), MobileNetV2 1.032x (0.98-1.057). A third run "
    "with torch.compile (3 rounds): training 0.99-1.11x eager PyTorch and 0.97-1.15x "
    "compiled, inference 1.01-1.43x eager and 0.95-1.00x compiled (inductor trained at "
    "0.96-1.03x eager PyTorch there).",
    "Fixed cost per step (AVX2 machine, batch 4, where the convolutions are small): Keras "
    "took about 12 ms a step more than the port on resnet5m_row6 and 30 ms on "
    "se_resnet_mixup, from Python (the graph walk, variable reads, clipvalue's per-variable "
    "clip, 6 ms) and from the kernels' layout: a (h, w, in, out) kernel read as PyTorch's "
    "(out, in, h, w) is neither contiguous nor channels-last, so oneDNN copies it on every "
    "call and its gradient is copied back (one 512-channel 3x3 layer at 4x4 pixels, forward "
    "and backward: 22 ms against 9.5 at batch 4, 175 against 163 at batch 128). Storing each "
    "Conv2D kernel (and its optimizer slots) with the port's channels-last strides behind "
    "the same (h, w, in, out) shape removed both copies: resnet5m_row6 at batch 4 went from "
    "0.863x to 0.926x (4 paired rounds each), but at batch 128 it gave 1.001x against "
    "1.000x without it (8 paired rounds each, ranges 0.986-1.014 and 0.993-1.007): under "
    "the noise of a 2.2 s step, so it was not kept (a stored variable whose strides differ "
    "from its shape's would reach saving, loading and every optimizer).",
    "clipvalue on the PyTorch backend (se_resnet_mixup's recipe): Keras's ops.clip converts "
    "and checks each of the 87 gradients before torch.clip; the torch-style optimizers now "
    "call torch.clamp on each directly (out of place, as ops.clip): 4.2 -> 1.1 ms a step "
    "with glibc's thresholds raised (two multi-tensor clamps out of place 1.4 ms, in place "
    "as clip_grad_value_ does 0.6). That is under 0.1% of the batch-128 step, so "
    "se_resnet_mixup's ratio does not move with it.",
    "Kernel layout, a lighter try (AVX2 machine): each Conv2D kernel copied once a step into "
    "the port's channels-last (out, h, w, in) order before the convolution, so that oneDNN "
    "no longer reorders the strided (h, w, in, out) view itself. With a plain 4-D permute "
    "copy (4.3 ms for a 512-channel 3x3 kernel) one such layer at batch 4, forward and "
    "backward, went from 20.8 to 16.4 ms (port 9.1; the gradient's copy back stays); a "
    "blocked 2-D transpose does the copy in 2.2 ms. With that transpose, resnet5m_row6 "
    "trained at batch 4 1.017x as fast (6 paired rounds, 0.984-1.029), i.e. at 0.89x the "
    "port instead of 0.87x; at batch 128 that is about 0.1% of the step, so it was not "
    "kept.",
    "The report of 2026-11-25 (one run per network, 5 rounds each, joined with --merge) ran "
    "on another AVX-512 machine with the same CPU flags (avx512_bf16, no AMX) that took "
    "0.6-0.7x as many images a second as the one of 2026-11-23 (ResNet-20 fp32 training "
    "650 against 930 img/s on Keras, 644 against 914 on PyTorch), with the training step "
    "of that report plus the clamp above. Ratios there: fp32 training 0.99-1.13x (se_resnet_mixup "
    "and resnet5m_row6 0.99x, rounds 0.97-1.02 and 0.97-1.00; modified_resnet 1.00x), "
    "where the 2026-11-23 report had 0.94-1.12x; inference 1.00-1.33x; bf16 training 1.54x "
    "fp32 for ResNet-20 (rounds 1.42-1.67; PyTorch 1.50x), 1.62-1.83x for the others. "
    "In a fresh process that has not trained, the PyTorch port's first inference runs "
    "page-fault while glibc's heap grows (2.5 million faults over 8 resnet_deep batches, 85 "
    "against 162 img/s once warm; Keras 83,000); in the benchmark, where training runs "
    "first, resnet_deep's inference rounds stayed within 0.99-1.06x.",
    "The two fp32 training ratios under 1.0 in that report, timed again on the same machine "
    "with more rounds (Case.keras_train against Case.torch_train in channels-last, 6 steps a "
    "run, 12 paired rounds, alternating which goes first): resnet5m_row6 0.984x (rounds "
    "0.954-1.054, mean 0.990), se_resnet_mixup 1.004x (0.949-1.056, mean 1.001). "
    "torch.profiler over resnet5m_row6 training runs (5 steps each, two of them warm-up), "
    "three of each framework in the order PyTorch, Keras, Keras, PyTorch, PyTorch, Keras, "
    "in one process: the memory-bound operators moved by up to 2x "
    "from run to run on both sides (BatchNorm backward 183-451 ms over 5 steps on Keras, "
    "197-271 on PyTorch; BatchNorm forward 131-581 across both), so one profile's per-operator "
    "difference is no evidence. The operators that differ in every run: Keras's copies "
    "between its (h, w, in, out) kernels and oneDNN's layout (aten::copy_, 13-14 ms a "
    "step against 2.6 for the port), while the port spends 15-18 ms a step in add_ "
    "(most of it torch.optim's separate weight-decay and momentum updates, which Keras's fused SGD "
    "does in one pass). Those two about offset each other; with Keras's Python around the "
    "kernels (under 1% of a step under cProfile, above) what is left is under 1% of this "
    "1.75 s step and inside the rounds' spread.",
]


def resident_mb():
    with open("/proc/self/statm") as stream:
        return int(stream.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def cpu_description():
    """The CPU's model and the vector extensions that decide fp32 and bf16 speed."""
    from training.machine import cpu_flags, cpu_model

    model = cpu_model() or platform.processor() or platform.machine()
    flags = cpu_flags()
    if flags is None:
        return model
    wanted = ["avx2", "avx512f", "avx512_bf16", "amx_bf16"]
    return f"{model} ({', '.join(flag for flag in wanted if flag in flags) or 'no AVX2'})"


def synthetic_split(images, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (images, 32, 32, 3), dtype=np.uint8),
            rng.integers(0, 10, images))


class Case:
    """One experiment: its Keras model and pipeline, and the PyTorch port."""

    def __init__(self, experiment, precision, steps, batch=BATCH):
        import keras
        import numpy as np
        import torch

        from benchmarks.torch_port import TorchPort, parameter_count
        from data.normalize import Normalizer
        from experiments.recipes import EXPERIMENTS
        from models import build_model, count_params
        from training.engine import RunOptions, compile_model, precision_policy, training_batches

        self.recipe = recipe = EXPERIMENTS[experiment]
        self.experiment = experiment
        self.precision, self.steps, self.batch = precision, steps, batch
        self.torch = torch
        images, labels = synthetic_split(batch * (steps + 2))  # 2 warm-up steps
        normalizer = Normalizer(**recipe.normalization).fit(images)
        recipe_batch = dataclasses.replace(recipe, batch_size=batch)
        self.batches, _ = training_batches(recipe_batch, RunOptions(), normalizer,
                                           (images, labels), (images[:batch], labels[:batch]), 10)
        self.eval_images = np.ascontiguousarray(self.batches[0][0], dtype="float32")
        keras.utils.set_random_seed(0)
        with precision_policy(precision):  # as run.py --precision builds it
            self.model = build_model(recipe.model, 10, **recipe.model_args)
        self.compile = lambda jit: compile_model(self.model, recipe, recipe.optimizer,
                                                 {"kind": "constant"}, jit_compile=jit)
        # PyTorch on the GPU where there is one (as Keras's JAX and PyTorch backends
        # place themselves), else on the CPU.
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.port = TorchPort(self.model).to(self.device)
        self.params = count_params(self.model)[0]
        if parameter_count(self.port) != self.params:
            raise SystemExit(f"error: the PyTorch port of {experiment} has "
                             f"{parameter_count(self.port):,} parameters, Keras {self.params:,}")
        if recipe.optimizer["name"] not in ("sgd", "adam"):
            raise SystemExit(f"error: no PyTorch optimizer mapped for {recipe.optimizer['name']!r}")
        self.clipvalue = recipe.optimizer.get("clipvalue")
        self.smoothing = recipe.label_smoothing

    # ---------------------------------------------------------------- Keras
    def keras_train(self, jit="auto"):
        import keras

        from callbacks import EpochLog
        from callbacks import EpochSync

        class StepClock(keras.callbacks.Callback):
            """Times steps only: the epoch's setup (iterator, callbacks) is not a step."""

            def __init__(self):
                super().__init__()
                self.ends = []

            def on_train_batch_end(self, batch, logs=None):
                # The step's loss as a number: on an accelerator the step has
                # then finished, not only been dispatched.
                keras.ops.convert_to_numpy(logs["loss"])
                self.ends.append(time.perf_counter())

        clock = StepClock()
        self.compile(jit)
        self.model.fit(self.batches, epochs=1, steps_per_epoch=self.steps + 2, shuffle=False,
                       verbose=0, callbacks=[EpochSync(self.batches), EpochLog(), clock])
        # Steps 0 and 1 trace and warm up; the timed steps are the ones after.
        return self.batch * self.steps / (clock.ends[-1] - clock.ends[1])

    def keras_infer(self, jit="auto"):
        import numpy as np

        self.compile(jit)
        self.model.predict(self.eval_images, batch_size=self.batch, verbose=0)  # traces
        # One predict over `steps` batches, as a user predicts a dataset (a call
        # per batch would time predict's per-call setup instead).
        images = np.concatenate([self.eval_images] * self.steps)
        started = time.perf_counter()
        self.model.predict(images, batch_size=self.batch, verbose=0)
        return len(images) / (time.perf_counter() - started)

    # -------------------------------------------------------------- PyTorch
    def torch_optimizer(self):
        """torch.optim's form of the recipe's optimizer, new for each timed run:
        its momentum buffers then take the layout being timed (buffers left in
        NCHW from an earlier run halve channels-last training, measured)."""
        from benchmarks.torch_port import l2_groups

        spec, torch = self.recipe.optimizer, self.torch
        groups = l2_groups(self.port, self.model)
        if spec["name"] == "sgd":
            return torch.optim.SGD(groups, lr=spec["learning_rate"],
                                   momentum=spec.get("momentum", 0.0),
                                   nesterov=spec.get("nesterov", False),
                                   weight_decay=spec.get("weight_decay", 0.0))
        return torch.optim.Adam(groups, lr=spec["learning_rate"],
                                weight_decay=spec.get("weight_decay", 0.0))

    def _autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = {"bf16": self.torch.bfloat16, "fp16": self.torch.float16}[self.precision]
        return self.torch.autocast(self.device, dtype=dtype)

    def _tensor(self, array, layout):
        torch = self.torch
        tensor = torch.from_numpy(array).to(self.device).permute(0, 3, 1, 2)  # NCHW logical
        return tensor.contiguous(memory_format=layout)

    def _synchronize(self):
        if self.device == "cuda":  # kernels run asynchronously: wait before reading the clock
            self.torch.cuda.synchronize()

    def _compiled(self, port):
        """torch.compile(port), compiled afresh: dynamo caches compilations per
        code object (TorchPort.forward, shared by every network) and, past its
        recompile limit (8), runs the function eagerly without saying so in the
        result; it did so from the fifth network on before this reset."""
        self.torch._dynamo.reset()
        return self.torch.compile(port)

    def torch_train(self, layout, compiled=False):
        torch = self.torch
        port = self.port.to(memory_format=layout).train()
        optimizer = self.torch_optimizer()
        if compiled:
            port = self._compiled(port)

        def step(index):
            images, labels = self.batches[index % len(self.batches)]
            if self.batches.label_column:  # mixup runs' own-label column (training.losses)
                labels = labels[:, :-1]
            x = self._tensor(images, layout)
            y = torch.from_numpy(labels).to(self.device)
            with self._autocast():
                loss = torch.nn.functional.cross_entropy(port(x), y, label_smoothing=self.smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.clipvalue:
                torch.nn.utils.clip_grad_value_(port.parameters(), self.clipvalue)
            optimizer.step()

        for index in range(2):
            step(index)
        self._synchronize()
        started = time.perf_counter()
        for index in range(self.steps):
            step(index)
        self._synchronize()
        return self.batch * self.steps / (time.perf_counter() - started)

    def torch_infer(self, layout, compiled=False):
        """A PyTorch evaluation loop over the same images as keras_infer's predict:
        each batch from NumPy into the layout, the logits back to NumPy."""
        torch = self.torch
        port = self.port.to(memory_format=layout).eval()
        if compiled:
            port = self._compiled(port)

        def predict(batches):
            with torch.no_grad(), self._autocast():
                for _ in range(batches):
                    port(self._tensor(self.eval_images, layout)).float().cpu().numpy()

        predict(2)  # warm-up (and compilation)
        started = time.perf_counter()
        predict(self.steps)
        return self.batch * self.steps / (time.perf_counter() - started)


# Keras's compile modes worth timing per backend (jit_compile): XLA on and off on
# TensorFlow ("auto" is XLA); JAX always compiles; PyTorch's jit_compile=True is
# torch.compile through Keras, which trained slower than eager here (resnet20
# 229-261 against 320-343 img/s), so eager is what run.py uses and what is timed.
KERAS_VARIANTS = {"tensorflow": {"xla": True, "no_xla": False}, "jax": {"xla": True},
                  "torch": {"eager": False}}
VARIANT_COLUMNS = [("keras_train_xla", "Keras train XLA"), ("keras_train_no_xla", "Keras train no XLA"),
                   ("keras_train_eager", "Keras train eager"), ("torch_train_nchw", "PyTorch train NCHW"),
                   ("torch_train_channels_last", "PyTorch train channels-last"),
                   ("keras_infer_xla", "Keras infer XLA"), ("keras_infer_no_xla", "Keras infer no XLA"),
                   ("keras_infer_eager", "Keras infer eager"), ("torch_infer_nchw", "PyTorch infer NCHW"),
                   ("torch_infer_channels_last", "PyTorch infer channels-last")]


def measure(experiment, precisions, steps, rounds, torch_compile=False, batch=BATCH):
    """One row per precision for `experiment`. Each round times every
    precision's Keras and PyTorch runs in turn, so that a bf16 row's speed-up
    over fp32 is paired by round, as each row's Keras/PyTorch ratio is (rows
    timed minutes apart moved with the machine's load: ResNet-20's bf16/fp32
    was 1.35x to 1.60x in four runs)."""
    cases = {precision: Case(experiment, precision, steps, batch) for precision in precisions}
    runs = {precision: {} for precision in precisions}
    for round_index in range(rounds):
        # Alternate which precision, and which framework, goes first each round
        # (the first run after another meets the heap and caches that run left).
        order = precisions if round_index % 2 == 0 else precisions[::-1]
        for precision in order:
            time_round(cases[precision], runs[precision], round_index)
    rows, fastest = {}, {}
    for precision in precisions:
        rows[precision], fastest[precision] = summarize(cases[precision], runs[precision],
                                                        rounds, torch_compile)
    if "fp32" in rows:
        for precision, row in rows.items():
            if precision != "fp32":  # this precision's speed over fp32, round by round
                for framework in ("keras", "torch"):
                    row[f"{framework}_train_over_fp32_rounds"] = [
                        mine / theirs for mine, theirs in zip(
                            runs[precision][fastest[precision][framework]],
                            runs["fp32"][fastest["fp32"][framework]])]
    return list(rows.values())


def time_round(case, runs, round_index):
    """One round of `case`: training, then inference, each framework's variants in
    turn; appends images/s to `runs` (per variant key)."""
    import keras
    import torch

    layouts = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}
    variants = {"keras": KERAS_VARIANTS[keras.backend.backend()], "torch": layouts}
    timers = {("keras", "train"): case.keras_train, ("keras", "infer"): case.keras_infer,
              ("torch", "train"): case.torch_train, ("torch", "infer"): case.torch_infer}
    order = ("keras", "torch") if round_index % 2 == 0 else ("torch", "keras")
    for kind in ("train", "infer"):
        for framework in order:
            for name, setting in variants[framework].items():
                runs.setdefault(f"{framework}_{kind}_{name}", []).append(
                    timers[framework, kind](setting))


def summarize(case, runs, rounds, torch_compile):
    """(A row: each variant's median, each framework's fastest, their ratios;
    {framework: its fastest training variant's key in `runs`})."""
    import keras
    import torch

    runs = dict(runs)
    if torch_compile:  # reported beside the eager reference, not instead of it
        runs["torch_train_compiled"] = [case.torch_train(torch.channels_last, compiled=True)]
        runs["torch_infer_compiled"] = [case.torch_infer(torch.channels_last, compiled=True)]
    speed = {key: statistics.median(values) for key, values in runs.items()}
    compiled = {kind: speed.pop(f"torch_{kind}_compiled", None) for kind in ("train", "infer")}
    # The variant each framework is reported by: its fastest by median.
    fastest = {kind: {framework: max((key for key in speed if key.startswith(f"{framework}_{kind}_")),
                                     key=speed.get)
                      for framework in ("keras", "torch")} for kind in ("train", "infer")}
    best = {kind: {framework: speed[key] for framework, key in fastest[kind].items()}
            for kind in ("train", "infer")}
    # Each round's own ratio of those two variants, timed next to each other: their
    # range is the run-to-run spread, and the ratio of the medians lies within it.
    round_ratios = {kind: [runs[fastest[kind]["keras"]][index] / runs[fastest[kind]["torch"]][index]
                           for index in range(rounds)] for kind in ("train", "infer")}
    row = {"network": case.recipe.model, "experiment": case.experiment,
           "precision": case.precision, "backend": keras.backend.backend(),
           "trainable_params": case.params, "batch": case.batch, **speed,
           "keras_train_ips": best["train"]["keras"], "torch_train_ips": best["train"]["torch"],
           "train_ratio": best["train"]["keras"] / best["train"]["torch"],
           "keras_infer_ips": best["infer"]["keras"], "torch_infer_ips": best["infer"]["torch"],
           "infer_ratio": best["infer"]["keras"] / best["infer"]["torch"],
           "train_ratio_rounds": round_ratios["train"], "infer_ratio_rounds": round_ratios["infer"],
           **{f"torch_compiled_{kind}_ips": compiled[kind] for kind in compiled},
           **{f"{kind}_ratio_to_compiled": best[kind]["keras"] / compiled[kind] if compiled[kind]
              else None for kind in compiled}}
    return row, fastest["train"]


def tune_allocator(args):
    """As run.py does (training/allocator.py); for the whole process, so PyTorch
    runs under the same malloc settings as Keras. --default-malloc skips it."""
    import keras

    from training import allocator

    return False if args.default_malloc else allocator.tune_for_backend(keras.backend.backend())


def memory_child(framework, experiment, precision, steps, batch=BATCH):
    """In a child process: peak resident memory while training, above the memory
    held once the data, both models and the optimizers exist."""
    import torch

    import threading

    case = Case(experiment, precision, steps, batch)
    if case.device == "cuda":  # the step's memory is the GPU's; the host's barely moves
        return device_peak_mb(framework, case)
    before = resident_mb()
    peak = [before]
    done = threading.Event()

    def sample():  # ru_maxrss would report the import-time peak; sample the current RSS
        while not done.is_set():
            peak[0] = max(peak[0], resident_mb())
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    if framework == "keras":
        case.keras_train()
    else:
        case.torch_train(torch.channels_last)
    done.set()
    sampler.join()
    return max(peak[0], resident_mb()) - before


def device_peak_mb(framework, case):
    """On a GPU: the peak of the allocator the framework trains through, above what
    it held before the steps. Both allocators count the bytes they hand out, not
    what they reserve (JAX reserves most of the GPU when it starts). JAX's peak
    cannot be reset, so a higher peak while the models were built would count
    too; a training step's activations are far larger than the weights."""
    import keras

    allocator = keras.backend.backend() if framework == "keras" else "torch"
    if allocator == "jax":
        import jax

        device = jax.local_devices()[0]
        before = device.memory_stats()["bytes_in_use"]
        case.keras_train()
        return (device.memory_stats()["peak_bytes_in_use"] - before) / 2**20
    if allocator == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.reset_memory_stats("GPU:0")
        before = tf.config.experimental.get_memory_info("GPU:0")["current"]
        case.keras_train()
        return (tf.config.experimental.get_memory_info("GPU:0")["peak"] - before) / 2**20
    # PyTorch itself, or Keras on its backend: torch's caching allocator.
    torch = case.torch
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    if framework == "keras":
        case.keras_train()
    else:
        case.torch_train(torch.channels_last)
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2**20


def memory(framework, experiment, precision, steps, default_malloc, batch=BATCH):
    command = [sys.executable, os.path.abspath(__file__), "--memory-child", framework,
               "--models", experiment, "--precision", precision, "--steps", str(steps),
               "--batch-size", str(batch),
               *(["--default-malloc"] if default_malloc else [])]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"error: memory child failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_mb"]


def best_rows(rows):
    """Per network and precision: the row of the Keras backend that trained fastest."""
    best = {}
    for row in rows:
        key = (row["experiment"], row["precision"])
        if key not in best or row["keras_train_ips"] > best[key]["keras_train_ips"]:
            best[key] = row
    return list(best.values())


def bf16_speedup(rows):
    """{network: [Keras bf16 / fp32 training speed, PyTorch's, Keras's rounds]} where
    both were measured: the median of the rounds' own ratios where the two
    precisions were timed round by round (measure), else the ratio of the rows."""
    by_key = {(row["experiment"], row["precision"]): row for row in best_rows(rows)}
    names = dict.fromkeys(row["experiment"] for row in rows)
    speedups = {}
    for name in names:
        if (name, "bf16") not in by_key or (name, "fp32") not in by_key:
            continue
        half, full = by_key[name, "bf16"], by_key[name, "fp32"]
        paired = (half.get("keras_train_over_fp32_rounds")
                  if half["backend"] == full["backend"] else None)
        if paired:
            speedups[name] = [statistics.median(paired),
                              statistics.median(half["torch_train_over_fp32_rounds"]), paired]
        else:
            speedups[name] = [half["keras_train_ips"] / full["keras_train_ips"],
                              half["torch_train_ips"] / full["torch_train_ips"], []]
    return speedups


def merge(paths):
    """One report from several runs' JSON (on a machine whose calls are time-limited,
    one run per network or precision): their rows together, the first run's setting."""
    from training import record

    reports = [record.read_json(path) for path in paths]
    result = dict(reports[0])
    result["rows"] = [row for report in reports for row in report["rows"]]
    batches = sorted({row["batch"] for row in result["rows"]})
    if len(batches) > 1:  # a table of ratios names one batch
        raise SystemExit(f"error: these reports were measured at batch sizes {batches}; "
                         "merge runs of one batch size (--batch-size) into one report")
    result["batch"] = batches[0]
    # A report that is itself a merge lists its own runs (merging into it adds runs).
    result["merged_from"] = [run for report in reports for run in report.get("merged_from") or [
        {"date": report["date"], "models": sorted({row["experiment"] for row in report["rows"]})}]]
    result["date"] = min(report["date"] for report in reports)
    result["bf16_speedup"] = bf16_speedup(result["rows"])
    result["notes"] = NOTES
    return result


def spread(values):
    """' (low-high)' of per-round values, where there were several rounds; else ''."""
    return f" ({min(values):.2f}-{max(values):.2f})" if len(values) > 1 else ""


def round_range(row, kind):
    """spread() of a row's per-round Keras/PyTorch ratios."""
    return spread(row.get(f"{kind}_ratio_rounds") or [])


def table(result):
    versions = result["versions"]
    # Reports from before --batch-size name the batch in their rows only.
    batch = result.get("batch") or result["rows"][0]["batch"]
    lines = ["# Throughput: Keras against PyTorch", "",
             f"Keras {versions['keras']} on each backend ({', '.join(result['backends'])}) "
             f"against PyTorch {versions['torch']} (eager; the faster of NCHW and channels-last), "
             f"measured in the same process as each backend's Keras, alternating; batch {batch}, "
             f"{result['threads']} threads, {result['device']}, {result.get('cpu', '')}, "
             f"{result['steps']} timed steps "
             f"after warm-up, median of {result['rounds']} round(s); {result['date']}. "
             f"Training batches are built by {result.get('input_threads', 1)} input thread(s) "
             "ahead of the step, as run.py builds them (data/pipeline.py), for both frameworks.",
             "",
             *([f"Joined from {len(result['merged_from'])} runs of this setting "
                "(benchmarks/throughput.py --merge): "
                + "; ".join(f"{', '.join(run['models'])} at {run['date']}"
                            for run in result["merged_from"]) + ".", ""]
               if result.get("merged_from") else []),
             "glibc keeps freed memory for reuse (training/allocator.py, as run.py sets it; "
             "both frameworks share the process): "
             + ", ".join(f"{backend} {'yes' if kept else 'no'}" for backend, kept
                         in result.get("malloc_keeps_freed_memory", {}).items()) + ".", "",
             "Best Keras backend per network:", "",
             "| network | precision | backend | Keras train img/s | PyTorch train img/s | "
             "train ratio | Keras infer img/s | PyTorch infer img/s | infer ratio | "
             "Keras peak MiB | PyTorch peak MiB | memory ratio |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in best_rows(result["rows"]):
        memory_cells = ("- | - | -" if row.get("keras_peak_mb") is None else
                        f"{row['keras_peak_mb']:.0f} | {row['torch_peak_mb']:.0f} | "
                        f"{row['keras_peak_mb'] / row['torch_peak_mb']:.2f}")
        lines.append(
            f"| {row['experiment']} ({row['trainable_params']:,}) | {row['precision']} | "
            f"{row['backend']} | {row['keras_train_ips']:.0f} | {row['torch_train_ips']:.0f} | "
            f"**{row['train_ratio']:.2f}**{round_range(row, 'train')} | {row['keras_infer_ips']:.0f} | "
            f"{row['torch_infer_ips']:.0f} | **{row['infer_ratio']:.2f}**{round_range(row, 'infer')} | "
            f"{memory_cells} |")
    lines += ["", "Every backend and variant (images/s; - where a variant does not apply):", "",
              "| network | precision | backend | train ratio | infer ratio | "
              + " | ".join(title for _, title in VARIANT_COLUMNS) + " |",
              "|---|---|---|---:|---:|" + "---:|" * len(VARIANT_COLUMNS)]
    for row in result["rows"]:
        lines.append(f"| {row['experiment']} | {row['precision']} | {row['backend']} | "
                     f"{row['train_ratio']:.2f} | {row['infer_ratio']:.2f} | " + " | ".join(
                         f"{row[key]:.0f}" if row.get(key) else "-"
                         for key, _ in VARIANT_COLUMNS) + " |")
    compiled = [row for row in result["rows"] if row.get("torch_compiled_train_ips")]
    if compiled:
        lines += ["", "Against torch.compile (PyTorch 2's compiler, channels-last; Keras as above):",
                  "", "| network | precision | backend | compiled train img/s | train ratio | "
                  "compiled infer img/s | infer ratio |", "|---|---|---|---:|---:|---:|---:|"]
        lines += [f"| {row['experiment']} | {row['precision']} | {row['backend']} | "
                  f"{row['torch_compiled_train_ips']:.0f} | {row['train_ratio_to_compiled']:.2f} | "
                  f"{row['torch_compiled_infer_ips']:.0f} | {row['infer_ratio_to_compiled']:.2f} |"
                  for row in compiled]
    if result.get("bf16_speedup"):
        # [Keras, PyTorch, Keras's paired rounds]; reports from before the pairing
        # hold [Keras, PyTorch].
        speedups = {name: (entry + [[]])[:3] for name, entry in result["bf16_speedup"].items()}
        paired = any(rounds for _, _, rounds in speedups.values())
        lines += ["", "bf16 training speed over fp32"
                  + (" (median of each round's own ratio, both precisions timed in every round; "
                     "Keras's range of rounds after it)" if paired else "") + ": "
                  + ", ".join(f"{name} Keras {keras_speedup:.2f}x{spread(rounds)} / PyTorch "
                              f"{torch_speedup:.2f}x" for name, (keras_speedup, torch_speedup, rounds)
                              in speedups.items()) + "."]
    lines += ["", "Ratios are Keras / PyTorch (above 1: Keras is faster; for memory, above 1: "
              "Keras uses more; peak memory is resident memory on a CPU, the framework's "
              "device allocator on a GPU, over a few training steps in a child process); "
              "a ratio's median is followed, where there were several rounds, "
              "by the range of the rounds' own ratios (each round times both frameworks). "
              "Targets: train and inference ratio >= 1.0, memory ratio <= 1.5, "
              "bf16 training >= 1.5x fp32.", "", "## What was tried", ""]
    lines += [f"- {note}" for note in result["notes"]] + [""]
    return "\n".join(lines)


def backend_rows(args):
    """In a child whose KERAS_BACKEND is set: every row for that backend."""
    import keras
    import torch

    torch.set_num_threads(os.cpu_count())  # as TensorFlow's and XLA's default pools
    malloc = tune_allocator(args)
    rows = []
    for experiment in args.models:
        for row in measure(experiment, args.precision, args.steps, args.rounds,
                           args.torch_compile, args.batch_size):
            precision = row["precision"]
            if not args.no_memory:
                row["keras_peak_mb"] = memory("keras", experiment, precision, 3, args.default_malloc,
                                              args.batch_size)
                row["torch_peak_mb"] = memory("torch", experiment, precision, 3, args.default_malloc,
                                              args.batch_size)
            rows.append(row)
            print(f"{experiment:18s} {precision} {row['backend']:10s}: train "
                  f"{row['keras_train_ips']:.0f} vs {row['torch_train_ips']:.0f} img/s "
                  f"({row['train_ratio']:.2f}), infer {row['keras_infer_ips']:.0f} vs "
                  f"{row['torch_infer_ips']:.0f} ({row['infer_ratio']:.2f})", flush=True)
    # The table lists one precision's rows, then the next's.
    rows.sort(key=lambda row: args.precision.index(row["precision"]))
    backend = keras.backend.backend()
    return {"rows": rows, "threads": torch.get_num_threads(), "malloc_keeps_freed_memory": malloc,
            "versions": {"keras": keras.__version__, "torch": torch.__version__,
                         backend: __import__(backend).__version__}}


def write_report(path, result):
    """The report's JSON at `path` and its markdown table beside it, each written atomically."""
    from training import record

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    record.write_json(path, result)
    record.atomic_write_text(os.path.splitext(path)[0] + ".md", table(result))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS, help="experiment names")
    parser.add_argument("--backends", nargs="+", default=list(KERAS_VARIANTS),
                        choices=list(KERAS_VARIANTS), help="Keras backends to time (one child each)")
    parser.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--steps", type=int, default=8, help="timed steps per measurement")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=BATCH,
                        help=f"images per step, for both frameworks (default {BATCH})")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory children")
    parser.add_argument("--torch-compile", action="store_true",
                        help="also time torch.compile'd training and inference (slow to compile "
                             "on a CPU)")
    parser.add_argument("--json", default=os.path.join(ROOT, "reports", "throughput_benchmark.json"))
    parser.add_argument("--default-malloc", action="store_true",
                        help="leave glibc's malloc thresholds as they are (run.py raises them "
                             "on the PyTorch backend; see training/allocator.py)")
    parser.add_argument("--notes-only", action="store_true",
                        help="measure nothing: bring the notes of --json's report (and its "
                             ".md table) up to date with this file's")
    parser.add_argument("--merge", nargs="+", metavar="REPORT.json",
                        help="measure nothing: join these reports' rows (runs of the same "
                             "setting, e.g. one per network) into --json and its .md table")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    parser.add_argument("--backend-child", help=argparse.SUPPRESS)  # JSON output path
    args = parser.parse_args(argv)
    if args.memory_child:
        tune_allocator(args)
        print(json.dumps({"peak_mb": memory_child(args.memory_child, args.models[0],
                                                  args.precision[0], args.steps,
                                                  args.batch_size)}))
        return 0
    if args.backend_child:
        with open(args.backend_child, "w") as stream:
            json.dump(backend_rows(args), stream)
        return 0
    if args.merge:
        write_report(args.json, merge(args.merge))
        print(f"wrote {args.json} and its .md table")
        return 0
    if args.notes_only:
        from training import record

        result = record.read_json(args.json)
        result["notes"] = NOTES
        write_report(args.json, result)
        return 0
    if args.steps < 1 or args.rounds < 1 or args.batch_size < 1:
        parser.error(f"--steps, --rounds and --batch-size must be >= 1; got {args.steps}, "
                     f"{args.rounds}, {args.batch_size}")
    from experiments.recipes import EXPERIMENTS

    unknown = [name for name in args.models if name not in EXPERIMENTS]
    if unknown:
        parser.error(f"unknown experiments {unknown}; see python experiments/run.py --list")
    import tempfile

    from benchmarks.augment import machine
    from data.pipeline import input_threads
    from training.machine import device_description

    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(),
              "device": device_description(), "cpu": cpu_description(), "backends": args.backends,
              "versions": {"python": platform.python_version()},
              "steps": args.steps, "rounds": args.rounds, "batch": args.batch_size,
              "notes": NOTES, "rows": [],
              "input_threads": input_threads()}
    child_args = list(argv if argv is not None else sys.argv[1:])
    for backend in args.backends:
        with tempfile.TemporaryDirectory() as folder:
            output = os.path.join(folder, "rows.json")
            command = [sys.executable, os.path.abspath(__file__), *child_args,
                       "--backend-child", output]
            child = subprocess.run(command, env={**os.environ, "KERAS_BACKEND": backend})
            if child.returncode != 0:
                raise SystemExit(f"error: the {backend} measurements failed (exit "
                                 f"{child.returncode}); see the messages above.")
            with open(output) as stream:
                part = json.load(stream)
        result["rows"] += part["rows"]
        result["versions"].update(part["versions"])
        result["threads"] = part["threads"]
        result.setdefault("malloc_keeps_freed_memory", {})[backend] = part["malloc_keeps_freed_memory"]
    result["bf16_speedup"] = bf16_speedup(result["rows"])
    write_report(args.json, result)
    print(f"wrote {args.json} and its .md table")
    return 0


if __name__ == "__main__":
    sys.exit(main())
