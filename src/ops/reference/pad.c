/* Zero padding of the reference backend (Keras ZeroPadding2D): y is x surrounded by `top` rows,
 * `bottom` rows, `left` and `right` columns of zeros; the gradient is the interior of dy. */
#include <string.h>

#include "ops/reference/reference.h"

static mt_status check_pad(const char *op, const mt_zero_pad_desc *d, mt_shape4 x_shape,
                           mt_shape4 y_shape) {
    if (d->top < 0 || d->left < 0 || d->bottom < 0 || d->right < 0)
        return MT_FAIL(MT_ERR_INVALID, "%s: negative padding (t%d l%d b%d r%d)", op, d->top,
                       d->left, d->bottom, d->right);
    mt_shape4 padded = {.n = d->input.n,
                        .h = d->input.h + d->top + d->bottom,
                        .w = d->input.w + d->left + d->right,
                        .c = d->input.c};
    MT_TRY(mt_ref_check_shape(op, "input", x_shape, d->input));
    MT_TRY(mt_ref_check_shape(op, "padded output", y_shape, padded));
    return MT_OK;
}

/* x: N,H,W,C; y: N,H+top+bottom,W+left+right,C */
mt_status mt_ref_zero_pad_forward(mt_backend *backend, const mt_zero_pad_desc *desc,
                                  const mt_tensor *x, mt_tensor *y) {
    MT_TRY(check_pad("zero_pad_forward", desc, x->shape, y->shape));
    const mt_shape4 i = x->shape, o = y->shape;
    const float *px = x->data;
    float *py = y->data;
#pragma omp parallel for collapse(2) num_threads(mt_ref_threads(backend)) schedule(static)
    for (int n = 0; n < o.n; n++) {
        for (int oh = 0; oh < o.h; oh++) {
            for (int ow = 0; ow < o.w; ow++) {
                int ih = oh - desc->top, iw = ow - desc->left;
                float *dst = py + (((size_t)n * o.h + oh) * o.w + ow) * o.c;
                if (ih < 0 || ih >= i.h || iw < 0 || iw >= i.w)
                    memset(dst, 0, (size_t)o.c * sizeof(float));
                else
                    memcpy(dst, px + (((size_t)n * i.h + ih) * i.w + iw) * i.c,
                           (size_t)i.c * sizeof(float));
            }
        }
    }
    return mt_ref_stored(backend, y);
}

/* dy: N,H+top+bottom,W+left+right,C; dx: N,H,W,C */
mt_status mt_ref_zero_pad_backward(mt_backend *backend, const mt_zero_pad_desc *desc,
                                   const mt_tensor *dy, mt_tensor *dx) {
    MT_TRY(check_pad("zero_pad_backward", desc, dx->shape, dy->shape));
    const mt_shape4 i = dx->shape, o = dy->shape;
    const float *pdy = dy->data;
    float *pdx = dx->data;
#pragma omp parallel for collapse(2) num_threads(mt_ref_threads(backend)) schedule(static)
    for (int n = 0; n < i.n; n++) {
        for (int ih = 0; ih < i.h; ih++) {
            for (int iw = 0; iw < i.w; iw++) {
                int oh = ih + desc->top, ow = iw + desc->left;
                memcpy(pdx + (((size_t)n * i.h + ih) * i.w + iw) * i.c,
                       pdy + (((size_t)n * o.h + oh) * o.w + ow) * o.c,
                       (size_t)i.c * sizeof(float));
            }
        }
    }
    return mt_ref_stored(backend, dx);
}
