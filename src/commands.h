/* One entry point per command, each in its own src/cmd_*.c. argv[0] is the command name.
 * Declared weak while commands are being brought up in parallel: a command whose file is not in the
 * build is simply not listed. */
#ifndef FLASHMOE_COMMANDS_H
#define FLASHMOE_COMMANDS_H

#define COMMAND_FN(name) int name(int argc, char **argv) __attribute__((weak))
COMMAND_FN(cmd_run);
COMMAND_FN(cmd_logits);
COMMAND_FN(cmd_tokenize);
COMMAND_FN(cmd_detokenize);
COMMAND_FN(cmd_chat);
COMMAND_FN(cmd_perplexity);
COMMAND_FN(cmd_convert);
COMMAND_FN(cmd_synth);
COMMAND_FN(cmd_bench);

#endif
