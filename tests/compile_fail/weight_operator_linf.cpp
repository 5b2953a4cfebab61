// Must not compile: the linf operator norm of a matrix needs no power iteration.
#include <opnorm/kernel/power_iteration.hpp>
opnorm::power_iteration<opnorm::weight_operator, opnorm::linf, opnorm::no_step> kernel;
