/* The fp16 loss-scale state machine (src/ops/loss_scale.c) step by step against Keras'
 * LossScaleOptimizer rules: start at 2^15; the 2000th finite step in a row doubles (not the
 * 1999th, and the counter restarts); a non-finite step is skipped, halves the scale, restarts the
 * counter and is counted; the divisor is the scale the step used; no floor and no ceiling. */
#include <math.h>

#include "ops/loss_scale.h"
#include "test_util.h"

/* n finite steps; every one applied and divided by the scale it used */
static void finite_steps(mt_loss_scale *s, int n) {
    for (int i = 0; i < n; i++) {
        float before = s->scale, divisor = 0.0f;
        CHECK(mt_loss_scale_update(s, true, &divisor));
        CHECK_MSG(divisor == before, "divisor %g, the step used %g", divisor, before);
    }
}

int main(void) {
    mt_loss_scale s;
    mt_loss_scale_init(&s);
    CHECK(s.scale == 32768.0f && s.good_steps == 0 && s.growth_steps == 2000 && s.skipped == 0);

    finite_steps(&s, 1999);
    CHECK_MSG(s.scale == 32768.0f && s.good_steps == 1999, "after 1999: %g, %d", s.scale,
              s.good_steps);
    float divisor = 0.0f;
    CHECK(mt_loss_scale_update(&s, true, &divisor)); /* the 2000th */
    CHECK_MSG(divisor == 32768.0f && s.scale == 65536.0f && s.good_steps == 0,
              "the 2000th finite step: divisor %g, scale %g, counter %d", divisor, s.scale,
              s.good_steps);

    /* an overflow part-way: skipped, halved, counter restarted, counted */
    finite_steps(&s, 1500);
    CHECK(!mt_loss_scale_update(&s, false, &divisor));
    CHECK_MSG(divisor == 65536.0f && s.scale == 32768.0f && s.good_steps == 0 && s.skipped == 1,
              "non-finite step: divisor %g, scale %g, counter %d, skipped %lld", divisor, s.scale,
              s.good_steps, (long long)s.skipped);
    finite_steps(&s, 1999); /* the 1500 before the overflow do not count */
    CHECK(s.scale == 32768.0f);
    finite_steps(&s, 1);
    CHECK(s.scale == 65536.0f);

    /* repeated overflows halve each time, with no floor */
    for (int i = 0; i < 20; i++)
        CHECK(!mt_loss_scale_update(&s, false, &divisor));
    CHECK_MSG(s.scale == ldexpf(1.0f, 16 - 20) && s.skipped == 21, "after 20 overflows: %g, %lld",
              s.scale, (long long)s.skipped);

    /* a smaller period, and growth without a ceiling up to fp32's infinity */
    mt_loss_scale_init(&s);
    s.growth_steps = 1;
    finite_steps(&s, 112);
    CHECK_MSG(s.scale == ldexpf(1.0f, 127), "2^15 doubled 112 times is %g, not 2^127", s.scale);
    finite_steps(&s, 1);
    CHECK_MSG(isinf(s.scale), "2^15 doubled 113 times is %g, not infinity", s.scale);
    return mt_test_finish();
}
