// Must not compile: a loss-gradient forward half needs a moving iterate.
#include <opnorm/kernel/power_iteration.hpp>
opnorm::power_iteration<opnorm::jacobian_operator<opnorm::loss_gradient<>>, opnorm::l2, opnorm::no_step> kernel;
