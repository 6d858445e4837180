/* mobiletune-pack: placeholder until the packer lands. */
#include <stdio.h>
int main(void) {
    fprintf(stderr, "mobiletune-pack: not built yet\n");
    return 1;
}
