// Forward declaration of cudaStream_t so launcher headers compile without the CUDA toolkit.
#pragma once

struct CUstream_st;
typedef struct CUstream_st* cudaStream_t;  // same declaration as CUDA's driver_types.h
