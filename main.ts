/**
 * Command-line entry of anonymizer: `deno run -P main.ts <command> [options]`.
 *
 * @module
 */
// deno-lint-ignore-file no-console -- a command talks to its user on stdout and stderr

import { AnonymizerError } from "./lib/errors.ts";

/** A subcommand: its one-line summary and its entry point returning the exit code. */
interface Command {
  summary: string;
  load: () => Promise<{ main: (args: string[]) => Promise<number> }>;
}

const COMMANDS: Record<string, Command> = {
  run: {
    summary: "consume http_log from Kafka and store it in ClickHouse (the service)",
    load: () => import("./lib/cli/run_command.ts"),
  },
  dlq: {
    summary: "dlq replay: re-validate dead letters and queue what passes now, exactly once",
    load: () => import("./lib/cli/dlq_command.ts"),
  },
  produce: {
    summary: "write synthetic HttpLogRecord messages to Kafka",
    load: () => import("./tools/produce_command.ts"),
  },
  migrate: {
    summary: "create the ClickHouse database, tables and views",
    load: () => import("./lib/cli/migrate_command.ts"),
  },
  status: {
    summary: "print the status of a running instance (--json for scripts)",
    load: () => import("./lib/cli/status_command.ts"),
  },
  demo: {
    summary: "migrate, produce and run the service, showing live progress",
    load: () => import("./tools/demo_command.ts"),
  },
};

const USAGE = `Usage: anonymizer <command> [options]

Commands:
${Object.entries(COMMANDS).map(([name, c]) => `  ${name.padEnd(10)}${c.summary}`).join("\n")}

Run "anonymizer <command> --help" for the options of a command.`;

if (import.meta.main) {
  const [name, ...args] = Deno.args;
  if (name === undefined || name === "--help" || name === "-h" || name === "help") {
    console.log(USAGE);
    Deno.exit(name === undefined ? 2 : 0);
  }
  const command = COMMANDS[name];
  if (command === undefined) {
    console.error(`Cannot run as the command is unknown: current value is ${JSON.stringify(name)}`);
    console.error(USAGE);
    Deno.exit(2);
  }
  try {
    Deno.exit(await (await command.load()).main(args));
  } catch (err) {
    // Expected failures (e.g. ClickHouse unreachable during migrate) get one line, not a stack.
    if (!(err instanceof AnonymizerError)) throw err;
    console.error(err.message);
    Deno.exit(1);
  }
}
