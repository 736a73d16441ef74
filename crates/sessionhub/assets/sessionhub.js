// sessionhub browser client: placeholder until the client lands.
export const VERSION = "0";
