/*
 * TEST DOUBLE of the NVIDIA driver's NVML library (libnvidia-ml.so.1).
 * NEVER SHIPPED: veil-tee's unit tests (src/nvml.rs) compile it with the
 * system C compiler into a temporary directory and load it through the same
 * C ABI as the real library, to test veil's NVML transport without a GPU.
 *
 * It implements only the NVML functions veil calls, with nvml.h's
 * signatures and structure layouts, and serves recorded answers: the
 * attestation report and certificate chain of a Hopper GPU (the test
 * writes them into "recorded.h" from shared/fixtures/nvidia). Compile-time
 * knobs (-D) make it answer as a hostile or broken driver would:
 *   CC_FEATURE=0          confidential computing off
 *   DEVICE_COUNT=n        n GPUs (default 1)
 *   REPORT_SIZE=n         claim n report bytes (default: the recording's)
 *   CHAIN_SIZE=n          claim n chain bytes (default: the recording's)
 *   UUID_UNTERMINATED     fill the whole UUID buffer, no NUL
 *   REPORT_ERROR=rc       nvmlDeviceGetConfComputeGpuAttestationReport fails
 */
#include <stdint.h>
#include <string.h>

#include "recorded.h" /* recorded_report[], recorded_chain[] */

#ifndef CC_FEATURE
#define CC_FEATURE 1
#endif
#ifndef DEVICE_COUNT
#define DEVICE_COUNT 1
#endif
#ifndef REPORT_SIZE
#define REPORT_SIZE sizeof(recorded_report)
#endif
#ifndef CHAIN_SIZE
#define CHAIN_SIZE sizeof(recorded_chain)
#endif

typedef int nvmlReturn_t;
#define NVML_SUCCESS 0
#define NVML_ERROR_UNINITIALIZED 1
#define NVML_ERROR_INVALID_ARGUMENT 2

typedef struct nvmlDevice_st *nvmlDevice_t;
struct nvmlDevice_st { unsigned int index; };

typedef struct {
    unsigned int environment;
    unsigned int ccFeature;
    unsigned int devToolsMode;
} nvmlConfComputeSystemState_t;

typedef struct {
    unsigned int certChainSize;
    unsigned int attestationCertChainSize;
    unsigned char certChain[0x1000];
    unsigned char attestationCertChain[0x1400];
} nvmlConfComputeGpuCertificate_t;

typedef struct {
    unsigned int isCecAttestationReportPresent;
    unsigned int attestationReportSize;
    unsigned int cecAttestationReportSize;
    unsigned char nonce[0x20];
    unsigned char attestationReport[0x2000];
    unsigned char cecAttestationReport[0x1000];
} nvmlConfComputeGpuAttestationReport_t;

/* Read by the tests: how many nvmlInit_v2 not yet shut down, and the
 * nonce the last report request carried. */
int veil_double_initialized = 0;
unsigned char veil_double_last_nonce[0x20];

/* The structure sizes this file was compiled with, for the tests to
 * compare with veil's #[repr(C)] declarations. */
unsigned long veil_double_sizes[3] = {
    sizeof(nvmlConfComputeSystemState_t),
    sizeof(nvmlConfComputeGpuAttestationReport_t),
    sizeof(nvmlConfComputeGpuCertificate_t),
};

static struct nvmlDevice_st devices[16];

nvmlReturn_t nvmlInit_v2(void) { veil_double_initialized++; return NVML_SUCCESS; }

nvmlReturn_t nvmlShutdown(void) {
    if (veil_double_initialized == 0) return NVML_ERROR_UNINITIALIZED;
    veil_double_initialized--;
    return NVML_SUCCESS;
}

const char *nvmlErrorString(nvmlReturn_t rc) {
    switch (rc) {
    case NVML_SUCCESS: return "Success";
    case NVML_ERROR_UNINITIALIZED: return "Uninitialized";
    case NVML_ERROR_INVALID_ARGUMENT: return "Invalid Argument";
    default: return "Unknown Error";
    }
}

nvmlReturn_t nvmlSystemGetConfComputeState(nvmlConfComputeSystemState_t *s) {
    if (!veil_double_initialized) return NVML_ERROR_UNINITIALIZED;
    s->environment = 2; /* NVML_CC_SYSTEM_ENVIRONMENT_PROD */
    s->ccFeature = CC_FEATURE;
    s->devToolsMode = 0;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *n) {
    if (!veil_double_initialized) return NVML_ERROR_UNINITIALIZED;
    *n = DEVICE_COUNT;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int i, nvmlDevice_t *d) {
    if (!veil_double_initialized) return NVML_ERROR_UNINITIALIZED;
    if (i >= DEVICE_COUNT || i >= 16) return NVML_ERROR_INVALID_ARGUMENT;
    devices[i].index = i;
    *d = &devices[i];
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t d, char *uuid, unsigned int len) {
    if (!veil_double_initialized) return NVML_ERROR_UNINITIALIZED;
#ifdef UUID_UNTERMINATED
    memset(uuid, 'A', len);
#else
    char s[64];
    int n = 0;
    const char *p = "GPU-00000000-0000-0000-0000-00000000000";
    while (*p) s[n++] = *p++;
    s[n++] = (char)('0' + d->index % 10);
    s[n] = 0;
    if ((unsigned int)n + 1 > len) return NVML_ERROR_INVALID_ARGUMENT;
    memcpy(uuid, s, (size_t)n + 1);
#endif
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetConfComputeGpuAttestationReport(
    nvmlDevice_t d, nvmlConfComputeGpuAttestationReport_t *r) {
    (void)d;
    if (!veil_double_initialized) return NVML_ERROR_UNINITIALIZED;
#ifdef REPORT_ERROR
    return REPORT_ERROR;
#endif
    memcpy(veil_double_last_nonce, r->nonce, sizeof r->nonce);
    /* A recording: the report carries the nonce it was recorded with. */
    memcpy(r->attestationReport, recorded_report, sizeof(recorded_report));
    r->attestationReportSize = (unsigned int)(REPORT_SIZE);
    r->isCecAttestationReportPresent = 0;
    r->cecAttestationReportSize = 0;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetConfComputeGpuCertificate(
    nvmlDevice_t d, nvmlConfComputeGpuCertificate_t *c) {
    (void)d;
    if (!veil_double_initialized) return NVML_ERROR_UNINITIALIZED;
    memset(c->certChain, 0, sizeof c->certChain);
    c->certChainSize = 0;
    memcpy(c->attestationCertChain, recorded_chain, sizeof(recorded_chain));
    c->attestationCertChainSize = (unsigned int)(CHAIN_SIZE);
    return NVML_SUCCESS;
}
