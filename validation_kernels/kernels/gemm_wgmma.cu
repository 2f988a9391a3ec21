// Hopper grouped GEMM (wgmma + TMA, sm_90a): NOT IMPLEMENTED YET.
//
// The plan (README "Status"): per CTA one TMA descriptor per operand (A rows are contiguous per
// expert, so one 2-D map over [rows, K] with out-of-bounds rows zero-filled serves every expert;
// W as a 2-D map over [E*N, K]), 128B-swizzled 64x64 bf16 stages on mbarriers, a producer warp and
// two consumer warpgroups issuing wgmma.mma_async m64n128k16, the same (expert, N-tile, M-tile)
// scheduler as gemm_mma.cu. It was not written blind in a session without a GPU: an unverified
// wgmma kernel would add rows to measurements.csv nobody could trust. The launcher reports
// cudaErrorNotSupported and the harness records status=not_implemented.
#include "validation_kernels/kernels/kernels.hpp"

namespace moesim::vk::gpu {

cudaError_t grouped_gemm_wgmma(const GroupedGemmArgs& /*args*/, int /*grid_blocks*/, cudaStream_t /*stream*/) {
  return cudaErrorNotSupported;
}

bool grouped_gemm_wgmma_implemented() { return false; }

}  // namespace moesim::vk::gpu
