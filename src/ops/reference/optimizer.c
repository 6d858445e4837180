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
    if (desc->skip && *desc->skip != 0.0f) return MT_OK; /* a non-finite step (loss_accumulate) */
    const size_t n = desc->count;
    float *s0 = mt_update_slot(desc, slots, 0), *s1 = mt_update_slot(desc, slots, 1);
    const mt_update_scalars v = *desc->scalars;
    for (size_t i = 0; i < n; i++)
        mt_update_element(desc, v, i, params, grads, s0, s1);
    return MT_OK;
}
