// What vector instructions this build may use, from the compiler's -march level (gru_lm/model/kernels.py
// builds for x86-64-v4 on CPUs with AVX-512, x86-64-v3 on those with AVX2 and FMA).
#pragma once

#if defined(__AVX2__) && defined(__FMA__)
#define GRU_LM_HAVE_AVX2 1
#else
#define GRU_LM_HAVE_AVX2 0
#endif

#if GRU_LM_HAVE_AVX2 && defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512DQ__) && \
    defined(__AVX512VL__)
#define GRU_LM_HAVE_AVX512 1
#else
#define GRU_LM_HAVE_AVX512 0
#endif
