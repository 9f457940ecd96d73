/* The ONNX protobuf walk of libedgeseg (csrc/runtime/onnx_form.c) on each file named: one line
 * per file, "external\tNAME\tLOCATION", "none" or "flaw\tBYTE", then "form\tBYTE" (-1: a
 * ModelProto). The library keeps the walk private; this driver is built from its source. */
#include <stdio.h>
#include <sys/stat.h>

#include "es_runtime.h"

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        struct stat st;
        FILE *fh = fopen(argv[i], "rb");
        if (!fh || stat(argv[i], &st) != 0) {
            printf("unreadable\n");
            if (fh) fclose(fh);
            continue;
        }
        es_external_tensor found;
        long long flaw = -1;
        int rc = es_onnx_external(fh, (long long)st.st_size, &found, &flaw);
        if (rc > 0) printf("external\t%s\t%s\n", found.name, found.location);
        else if (rc == 0) printf("none\n");
        else printf("flaw\t%lld\n", flaw);
        printf("form\t%ld\n", es_onnx_form_flaw(fh, (long long)st.st_size));
        fclose(fh);
    }
    return 0;
}
