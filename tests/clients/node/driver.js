// node-postgres with one setting; prints {"pid", "ok", "error"} as one JSON line.
// usage: node driver.js MODE HOST PORT CA_FILE   (MODE: disable | require | no-verify)
// require checks the server against CA_FILE (rejectUnauthorized, the default); no-verify
// accepts any certificate (rejectUnauthorized: false).
const fs = require("fs");
const { Client } = require("pg");

const [mode, host, port, ca] = process.argv.slice(2);
const ssl =
  mode === "disable"
    ? false
    : mode === "no-verify"
      ? { rejectUnauthorized: false }
      : { ca: fs.readFileSync(ca, "utf8"), servername: "localhost" };
const client = new Client({ host, port: Number(port), user: "postgres", database: "postgres", ssl });

client
  .connect()
  .then(() => client.query("select 1"))
  .then(() => client.end())
  .then(() => console.log(JSON.stringify({ pid: process.pid, ok: true })))
  .catch((err) => console.log(JSON.stringify({ pid: process.pid, ok: false, error: String(err) })));
