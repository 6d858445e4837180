/* TensorBoard event files (events.out.tfevents.*), written without TensorFlow: TFRecord framing
 * around hand-encoded tensorflow.Event protobufs (only the few fields of scalar summaries).
 *
 * The format: records of [u64 length][u32 masked CRC32C of the length][data]
 * [u32 masked CRC32C of the data], little-endian, masked = rotate_right(crc, 15) + 0xa282ead8;
 * each record's data is a serialized tensorflow.Event protobuf. The first record holds
 * file_version "brain.Event:2"; the others wall_time, step and a Summary of simple_value
 * scalars. The CRC32C is ISA-L's crc32_iscsi (ISA-L is already linked for the checkpoints'
 * CRC-32); the masking is TFRecord's own. */
#ifndef MOBILETUNE_TFEVENTS_H
#define MOBILETUNE_TFEVENTS_H

#include <stddef.h>
#include <stdint.h>

#include "mobiletune/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- CRC32C (Castagnoli) -------------------------------------------------------------------- */

/* The standard CRC32C (initial value and final xor 0xFFFFFFFF; "123456789" gives 0xE3069283), by
 * ISA-L's crc32_iscsi, which leaves both xors to its caller. */
uint32_t mt_crc32c(const void *data, size_t size);
/* Continue a CRC: mt_crc32c_extend(mt_crc32c(a), b) == mt_crc32c(a followed by b). */
uint32_t mt_crc32c_extend(uint32_t crc, const void *data, size_t size);
/* TFRecord's masking of a stored CRC. */
uint32_t mt_crc32c_mask(uint32_t crc);

/* ---- one TensorBoard event file ---------------------------------------------------------------
 */

typedef struct mt_event_writer mt_event_writer;

/* Create `folder` (and its parents) and a new event file in it, starting with the file_version
 * record. The file name is events.out.tfevents.<unix seconds>.<host name> (a suffix is added when
 * such a file already exists). */
mt_status mt_event_writer_open(const char *folder, mt_event_writer **out);

/* One scalar event. wall_time: Unix seconds (0: now). */
mt_status mt_event_writer_scalar(mt_event_writer *writer, const char *tag, int64_t step,
                                 double wall_time, float value);

/* Push buffered records to the file, so a running TensorBoard sees them. */
mt_status mt_event_writer_flush(mt_event_writer *writer);
/* Flush and close (NULL is fine). */
mt_status mt_event_writer_close(mt_event_writer *writer);

const char *mt_event_writer_path(const mt_event_writer *writer);

#ifdef __cplusplus
}
#endif
#endif
