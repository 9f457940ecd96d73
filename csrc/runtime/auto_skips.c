/* Whether "auto" may run an ONNX artifact of the bundle on OpenVINO's CPU plugin here: the rules
 * of edgeseg/runtime/selection.py's skip_reasons, for the C API's es_bundle_read. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cJSON.h"
#include "es_runtime.h"

/* Whether this x86 CPU adds u8 x s8 products in 32 bits (AVX512-VNNI, AVX-VNNI or AMX-INT8, from
 * the first "flags" line of /proc/cpuinfo): 1 yes, 0 no, -1 unknown (not x86, or no flags). */
static int cpu_has_vnni(void) {
#if defined(__x86_64__) || defined(__i386__)
    static const char *const vnni[] = {"avx512_vnni", "avx_vnni", "amx_int8", NULL};
    FILE *fh = fopen("/proc/cpuinfo", "r");
    if (!fh) return -1;
    char *line = NULL;
    size_t cap = 0;
    int found = -1;
    while (found < 0 && getline(&line, &cap, fh) >= 0) {
        if (strncmp(line, "flags", 5) != 0 || !strchr(line, ':')) continue;
        found = 0;
        int any = 0;
        for (char *save = NULL, *tok = strtok_r(strchr(line, ':') + 1, " \t\n", &save); tok;
             tok = strtok_r(NULL, " \t\n", &save)) {
            any = 1;
            for (int i = 0; vnni[i]; i++)
                if (strcmp(tok, vnni[i]) == 0) found = 1;
        }
        if (!any) found = -1;
        break;
    }
    free(line);
    fclose(fh);
    return found;
#else
    return -1;
#endif
}

/* The skip reasons: the export gate excluded the openvino runner for it or never ran it (the
 * entry's "scored", else parity.json's rows where they count; on INT8, also where neither lists
 * runners); or it is an INT8 graph not of the cpu scheme on an x86 CPU without VNNI. The decision
 * is never read from snprintf's count. */
int es_auto_skips(const cJSON *a, const cJSON *record, char *why, size_t n) {
    const cJSON *excluded = cJSON_GetObjectItemCaseSensitive(a, "excluded");
    const char *reason = cJSON_IsObject(excluded) ? es_json_string_at(excluded, "openvino") : NULL;
    if (reason) {
        snprintf(why, n, "the export gate excluded openvino: %s", reason);
        return 1;
    }
    const cJSON *scored = cJSON_GetObjectItemCaseSensitive(a, "scored"), *r = NULL;
    const char *precision = es_json_string_at(a, "precision");
    int int8 = precision && strcmp(precision, "int8") == 0;
    for (r = cJSON_IsArray(scored) ? scored->child : NULL; r && strcmp(r->valuestring, "openvino") != 0; r = r->next) {}
    int listed = cJSON_IsArray(scored) || record != NULL;
    int ran = cJSON_IsArray(scored) ? r != NULL : record != NULL && es_parity_scored(record, a, "openvino");
    if (listed && !ran) {
        snprintf(why, n, "not scored by the export gate: openvino was not installed where the bundle was "
                 "exported; edgeseg gate scores it");
        return 1;
    }
    if (!listed && int8) { /* from before the gate kept a list: it ran onnxruntime alone on INT8 */
        snprintf(why, n, "not scored by the export gate: a manifest without scored runners vouches for "
                 "onnxruntime alone on an INT8 graph; edgeseg gate scores it");
        return 1;
    }
    if (!int8) return 0;
    const cJSON *extra = cJSON_GetObjectItemCaseSensitive(a, "extra");
    const char *scheme = cJSON_IsObject(extra) ? es_json_string_at(extra, "int8_scheme") : NULL;
    if ((scheme && strcmp(scheme, "cpu") == 0) || cpu_has_vnni() != 0) return 0;
    snprintf(why, n, "INT8 graph of the %s scheme%s: its signed activations saturate u8 x s8 sums on this CPU (no VNNI); "
             "re-export with --int8-scheme cpu", scheme ? scheme : "tensorrt",
             scheme ? "" : " (exported before schemes were recorded)");
    return 1;
}
