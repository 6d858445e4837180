/* The reference optimizer update: one plain loop over the trainable buffer with the shared
 * per-element rule (ops/optimizer_update.h), serial, the oracle the cpu and cuda updates are
 * compared with. */
#include "ops/optimizer_update.h"
#include "ops/reference/reference.h"

/* params, grads: [count]; slots: mt_update_slot_count(desc) arrays, slot_stride apart */
mt_status mt_ref_optimizer_update(mt_backend *backend, const mt_optimizer_desc *desc,
                                  float *params, const float *grads, float *slots) {
    (void)backend;
    MT_TRY(mt_update_check("reference", desc, params, grads, slots));
    const size_t n = desc->count;
    const int slot_count = mt_update_slot_count(desc);
    float *s0 = slot_count > 0 ? slots : NULL;
    float *s1 = slot_count > 1 ? slots + mt_update_slot_stride(desc) : NULL;
    const float step = mt_update_step_size(desc);
    for (size_t i = 0; i < n; i++)
        mt_update_element(desc, step, i, params, grads, s0, s1);
    return MT_OK;
}
