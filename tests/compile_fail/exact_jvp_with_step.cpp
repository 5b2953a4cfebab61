// Must not compile: the exact-JVP power method iterates at a fixed x.
#include <opnorm/kernel/power_iteration.hpp>
opnorm::power_iteration<opnorm::jacobian_operator<opnorm::exact_jvp>, opnorm::l2, opnorm::projected_step> kernel;
