import { CRIU, DESTINATION_CRIU } from './paths.js';

// Before any test file loads: haul's default CRIU is the source's build of this pass of the
// matrix, and the destination's stand-in runs its own (both inherited by the processes tests start).
process.env['HAUL_CRIU'] = CRIU;
process.env['HAUL_TEST_DESTINATION_CRIU'] = DESTINATION_CRIU;
