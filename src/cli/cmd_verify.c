/* `mobiletune verify CHECKPOINT...`: is a checkpoint whole and usable, without loading a model?
 * The read checks the structure and every tensor's CRC-32 (docs/checkpoints.md); then every F32
 * tensor must be finite, as a resume or init_checkpoint demands. Exit 0 only when every file
 * passes; the first problem of each file is printed with its tensor. */
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "mobiletune/checkpoint.h"

static mt_status verify_one(const char *path) {
    mt_checkpoint *c = NULL;
    MT_TRY(mt_checkpoint_read(path, &c));
    mt_status status = mt_checkpoint_check_finite(c, NULL);
    if (status == MT_OK) {
        uint64_t bytes = 0;
        for (int i = 0; i < mt_checkpoint_tensor_count(c); i++)
            bytes += mt_checkpoint_tensor_at(c, i)->bytes;
        const char *format = mt_checkpoint_meta(c, "format");
        const char *epoch = mt_checkpoint_meta(c, "epoch");
        int verified = mt_checkpoint_checksums_verified(c);
        printf("%s: ok: %d tensors, %llu bytes, all finite, ", path, mt_checkpoint_tensor_count(c),
               (unsigned long long)bytes);
        if (verified > 0)
            printf("%d checksums match", verified);
        else
            printf("no checksums (written by another tool or an older mobiletune: the data "
                   "could not be checked)");
        if (format) printf("; %s", format);
        if (epoch) printf(", epoch %s", epoch);
        printf("\n");
    }
    mt_checkpoint_free(c);
    return status;
}

int mt_cmd_verify(int argc, char **argv) {
    const cli_spec spec = {
        .program = "mobiletune verify",
        .usage = "CHECKPOINT...",
        .description = "Check checkpoints (safetensors files) without loading a model: the "
                       "structure, every tensor's\nCRC-32 and that every float is finite. Exit "
                       "code 0 when all pass, 1 when one does not.",
        .positional = true,
    };
    char **positional = NULL;
    int count = 0;
    mt_status status = cli_parse(&spec, NULL, argc, argv, &positional, &count);
    if (status == MT_END) {
        free(positional);
        return CLI_EXIT_OK;
    }
    if (status == MT_OK && count == 0)
        status = MT_FAIL(MT_ERR_INVALID, "name at least one checkpoint (see --help)");
    if (status != MT_OK) {
        free(positional);
        return cli_fail("verify", status);
    }
    int code = CLI_EXIT_OK;
    for (int i = 0; i < count; i++) {
        status = verify_one(positional[i]);
        if (status != MT_OK) {
            cli_fail("verify", status);
            code = CLI_EXIT_FAILURE;
        }
    }
    free(positional);
    return code;
}
