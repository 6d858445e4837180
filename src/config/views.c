/* The parts of the config that the model, the optimizer and the LR schedule take. */
#include "mobiletune/config.h"

#include <math.h>

mt_model_config mt_config_model(const mt_train_config *config) {
    return (mt_model_config){
        .alpha = (float)config->model.alpha,
        .input_size = config->model.input_size,
        .classes = config->model.classes,
        .dropout = (float)config->model.dropout,
        .mode = config->model.mode,
        .fine_tune_at = config->model.fine_tune_at,
        .bn_mode = config->model.bn_mode,
        .bn_momentum = (float)config->model.bn_momentum,
        .batch_size = config->data.batch_size,
    };
}

mt_optimizer_params mt_config_optimizer(const mt_train_config *config) {
    return (mt_optimizer_params){
        .kind = config->optimizer.name,
        .rho = (float)config->optimizer.rho,
        .momentum = (float)config->optimizer.momentum,
        .epsilon = (float)config->optimizer.epsilon,
        .nesterov = config->optimizer.nesterov,
        .beta_1 = (float)config->optimizer.beta_1,
        .beta_2 = (float)config->optimizer.beta_2,
        .weight_decay = (float)config->optimizer.weight_decay,
    };
}

mt_status mt_config_lr_schedule(const mt_train_config *config, long steps_per_epoch, int world_size,
                                mt_lr_schedule *out) {
    if (steps_per_epoch <= 0 || world_size <= 0)
        return MT_FAIL(MT_ERR_INVALID,
                       "learning-rate schedule: %ld steps per epoch on %d ranks: both must be > 0 "
                       "(is the training split smaller than one global batch?)",
                       steps_per_epoch, world_size);
    long warmup = config->optimizer.warmup_steps > 0
                      ? config->optimizer.warmup_steps
                      : lround(config->optimizer.warmup_epochs * (double)steps_per_epoch);
    double scale = config->optimizer.scale_lr_with_world_size ? (double)world_size : 1.0;
    *out = (mt_lr_schedule){
        .kind = config->optimizer.schedule,
        .base_lr = config->optimizer.learning_rate * scale,
        .warmup_steps = warmup,
        .step_size = (long)config->optimizer.step_size * steps_per_epoch,
        .gamma = config->optimizer.gamma,
        .total_steps = (long)config->train.epochs * steps_per_epoch,
        .final_fraction = config->optimizer.cosine_final_fraction,
    };
    return MT_OK;
}
