// Schemas of the sas_fast operators; the CPU kernels are registered beside each kernel
// (smooth_softmax_pool.cpp, threshold_masks.cpp, pyramid.cpp, masked_images.cpp). Autograd formulas
// and fake (meta) implementations are registered from Python, in sas_fast/ops/cpp.py.
#include <torch/library.h>

TORCH_LIBRARY(sas_fast, m) {
  m.def("smooth_softmax_pool(Tensor premask, int window, float beta) -> (Tensor, Tensor, Tensor)");
  m.def("smooth_softmax_pool_backward(Tensor grad, Tensor smoothed, Tensor out, Tensor stats, "
        "int window, float beta) -> Tensor");
  m.def("threshold_masks(Tensor schedule, Tensor areas, float sharpness, Tensor? thresholds_init, "
        "bool implicit_grad, float tol, int max_iter) -> (Tensor, Tensor)");
  m.def("threshold_masks_backward(Tensor grad, Tensor masks, Tensor thresholds, float sharpness, "
        "bool implicit_grad) -> Tensor");
  m.def("blur_pyramid(Tensor images, int levels, float max_blur) -> Tensor");
  m.def("pyramid_mask(Tensor pyramid, Tensor masks) -> Tensor");
  m.def("pyramid_mask_backward(Tensor grad, Tensor pyramid, Tensor masks) -> Tensor");
  m.def("masked_images(Tensor schedule, Tensor thresholds, Tensor pyramid, float sharpness, "
        "bool insertion, bool deletion, bool implicit_grad, bool channels_last) -> Tensor");
  m.def("masked_images_backward(Tensor grad, Tensor schedule, Tensor thresholds, Tensor pyramid, "
        "float sharpness, bool insertion, bool deletion, bool implicit_grad) -> Tensor");
}
