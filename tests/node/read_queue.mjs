// Reads a BullMQ queue with Node BullMQ and prints what it sees as one JSON object.
//
//   node read_queue.mjs --redis redis://127.0.0.1:6379/0 --prefix bull \
//     --queue stitchwork.default --job <job id>
//
// Output: {"bullmq": version, "paused": bool, "counts": {state: n}, "jobs": [every job in
// wait/prioritized/active/delayed/paused, oldest first], "job": the --job one or null}.
// tests/e2e/test_bullmq_node.py runs it against a queue that stitchwork wrote.
import { createRequire } from "node:module";
import { parseArgs } from "node:util";

import { Job, Queue } from "bullmq";
import IORedis from "ioredis";

const require = createRequire(import.meta.url);
const { version } = require("bullmq/package.json");

const { values } = parseArgs({
  options: {
    redis: { type: "string", default: "redis://127.0.0.1:6379/0" },
    prefix: { type: "string", default: "bull" },
    queue: { type: "string" },
    job: { type: "string" },
  },
});
if (!values.queue) {
  console.error("read_queue.mjs: --queue is required");
  process.exit(2);
}

async function describe(job) {
  return {
    id: job.id,
    name: job.name,
    data: job.data,
    priority: job.priority,
    state: await job.getState(),
    attemptsMade: job.attemptsMade,
    timestamp: job.timestamp,
  };
}

const connection = new IORedis(values.redis, { maxRetriesPerRequest: null });
const queue = new Queue(values.queue, { connection, prefix: values.prefix });
try {
  const listed = await queue.getJobs(["active", "prioritized", "wait", "paused", "delayed"], 0, -1, true);
  const found = values.job ? await Job.fromId(queue, values.job) : undefined;
  const output = {
    bullmq: version,
    paused: await queue.isPaused(),
    counts: await queue.getJobCounts(),
    jobs: await Promise.all(listed.map(describe)),
    job: found ? await describe(found) : null,
  };
  process.stdout.write(JSON.stringify(output) + "\n");
} finally {
  await queue.close();
  connection.disconnect();
}
