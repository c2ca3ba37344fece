// Umbrella header of the mopt C++ API: `#include <mopt/mopt.h>` and link mopt::mopt.
// Every public header under include/mopt is listed here.
#pragma once

#include "mopt/algorithms/awq.h"
#include "mopt/algorithms/gptq.h"
#include "mopt/algorithms/smoothquant.h"
#include "mopt/calib/histogram_calibrator.h"
#include "mopt/calib/max_calibrator.h"
#include "mopt/calib/mse_calibrator.h"
#include "mopt/core/error.h"
#include "mopt/core/fnmatch.h"
#include "mopt/opt/safetensors.h"
#include "mopt/opt/state.h"
#include "mopt/quant/block_quant.h"
#include "mopt/quant/config.h"
#include "mopt/quant/fake_quant.h"
#include "mopt/quant/quantize_tensor.h"
#include "mopt/torch/configs.h"
#include "mopt/torch/quant_modules.h"
#include "mopt/torch/quantize.h"
#include "mopt/torch/save_restore.h"
#include "mopt/torch/tensor_quantizer.h"
