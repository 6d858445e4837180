# Regenerates the keras_layers_*.txt goldens: run with the venv python, argument = this folder.
import os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"]="3"
import keras, numpy as np
out = sys.argv[1]
for alpha,size in [(1.0,160),(0.35,224),(1.3,96),(0.5,64),(0.75,128),(1.4,224)]:
    keras.backend.clear_session()  # so every input is named input_layer
    m = keras.applications.MobileNetV2(input_shape=(size,size,3), alpha=alpha, include_top=False, weights=None)
    with open(f"{out}/keras_layers_{alpha}_{size}.txt","w") as f:
        f.write(f"# keras.applications.MobileNetV2(input_shape=({size},{size},3), alpha={alpha}, include_top=False), Keras {keras.__version__}\n")
        f.write("# index name class out_h out_w out_c params\n")
        for i,l in enumerate(m.layers):
            s = l.output.shape
            f.write(f"{i} {l.name} {type(l).__name__} {s[1]} {s[2]} {s[3]} {l.count_params()}\n")
        tr = sum(int(np.prod(w.shape)) for w in m.trainable_weights)
        f.write(f"total {m.count_params()} {tr}\n")
