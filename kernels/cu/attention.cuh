// attention.cuh: constants shared by attention.cu (v1) and attention_mma.cu (v2).
#pragma once
#include "common.cuh"

#define LOG2E 1.4426950408889634f
#define LN2 0.6931471805599453f
